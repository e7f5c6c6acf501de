// Package compose loads compose files with compose-go and converts the project into the stack model the way
// `docker stack deploy` does: names `<stack>_<name>`, the namespace label, overlay networks by default, the
// `deploy:` section, secrets and configs (with a content hash in their names, since Swarm cannot update them)
// and the list of compose keys Swarm ignores.
//
// In: compose file paths, environment, profiles, a stack name. Out: *stack.Stack, or an error classified as
// fault.Invalid that names the file, line and field. Reads the compose files and the files their secrets and
// configs point to; nothing else. Imports compose-go, the Docker API types, internal/stack and internal/fault.
package compose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// Options say what to load.
type Options struct {
	// Files are the compose files, merged in order. At least one.
	Files []string
	// Stack is the stack name. Empty means the `name:` of the compose files.
	Stack string
	// Env is the environment for interpolation, as KEY=VALUE; the caller decides what it holds (this package
	// never reads the process environment). A `.env` file in the directory of the first file is read too, as
	// `docker compose` does.
	Env []string
	// Profiles to enable; services with no profile are always on.
	Profiles []string
	// WorkDir resolves relative paths; empty means the directory of the first file.
	WorkDir string
	// WithoutValues loads secrets and configs whose file or environment variable is missing with no value
	// (and a warning) instead of failing: for `agent check` and `agent render`, which judge the specs and
	// never the values (a CI policy job has no production credentials). Never for apply.
	WithoutValues bool
}

var stackName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Load reads the compose files and converts them into a stack.
func Load(ctx context.Context, o Options) (*stack.Stack, error) {
	if len(o.Files) == 0 {
		return nil, fault.InvalidErr(errors.New("no compose file given (-c FILE)"))
	}
	for _, f := range o.Files {
		if _, err := os.Stat(f); err != nil {
			return nil, fault.InvalidErr(fmt.Errorf("compose file %s: %w", f, err))
		}
	}
	env := o.Env
	if env == nil {
		env = []string{}
	}
	var opts []cli.ProjectOptionsFn
	if o.WorkDir != "" {
		opts = append(opts, cli.WithWorkingDirectory(o.WorkDir))
	}
	opts = append(opts,
		cli.WithEnv(env),
		cli.WithEnvFiles(), // the .env of the working directory, as docker compose reads it
		cli.WithDotEnv,
		cli.WithProfiles(o.Profiles),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
	)
	if o.Stack != "" {
		if !stackName.MatchString(o.Stack) {
			return nil, fault.InvalidErr(fmt.Errorf("stack name %q: use lower-case letters, digits, '-' and '_'", o.Stack))
		}
		opts = append(opts, cli.WithName(o.Stack))
	}
	po, err := cli.NewProjectOptions(o.Files, opts...)
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("compose: %w", err))
	}
	project, err := po.LoadProject(ctx)
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("compose %s: %w", strings.Join(o.Files, ", "), explain(err)))
	}
	if project.Name == "" || !stackName.MatchString(project.Name) {
		return nil, fault.InvalidErr(fmt.Errorf("compose %s: no valid stack name: give STACK or a top-level `name:`", strings.Join(o.Files, ", ")))
	}
	c := &converter{project: project, files: absAll(o.Files), noValues: o.WithoutValues}
	st, err := c.convert()
	if err != nil {
		return nil, fault.InvalidErr(err)
	}
	return st, nil
}

func absAll(files []string) []string {
	out := make([]string, len(files))
	for i, f := range files {
		if a, err := filepath.Abs(f); err == nil {
			out[i] = a
		} else {
			out[i] = f
		}
	}
	return out
}

// unknownKey matches compose-go's schema message for a key the compose specification does not define.
var unknownKey = regexp.MustCompile(`(\S+) false schema`)

// explain makes compose-go's schema errors say what a user needs to read.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

func explain(err error) error {
	msg := err.Error()
	if m := unknownKey.FindStringSubmatch(msg); m != nil {
		return &explained{msg: strings.Replace(msg, m[0], m[1]+": unknown key (not in the compose specification)", 1), err: err}
	}
	return err
}
