// Package compose loads compose files with compose-go and converts the project into the stack model the way
// `docker stack deploy` does: names `<stack>_<name>`, the namespace label, overlay networks by default, the
// `deploy:` section, secrets and configs (with a content hash in their names, since Swarm cannot update them)
// and the list of compose keys Swarm ignores. A secret whose file is SOPS-encrypted takes its value from the
// Decrypter the caller gives (Options.SOPS; sops.go).
//
// In: compose file paths, environment, profiles, a stack name. Out: *stack.Stack, or an error classified as
// fault.Invalid that names the file, line and field. Reads the compose files and the files their secrets and
// configs point to; nothing else, except LoadCached, which also reads and writes its cache directory (stacks
// without values: cache.go). Imports compose-go, the Docker API types, internal/stack and internal/fault.
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
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/schema"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"

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
	// Root confines a load to a directory (a release, which is untrusted input): every file the compose
	// files name (include, extends, env_file, label_file, secret and config files) must resolve inside it,
	// links followed, each within MaxFileBytes and all within MaxTotalBytes (defaults: 4 MiB, 32 MiB).
	// Empty: not confined (the operator's own files, from the command line).
	Root                        string
	MaxFileBytes, MaxTotalBytes int64
	// Environment labels every object (io.sawmill.environment), so that the agents of two environments
	// sharing a swarm never take each other's objects. Empty: not labelled.
	Environment string
	// NameKey keys the content hash in secret and config names (swarm.NameKey: shared by the agents of a
	// swarm, never printed). Nil: the names leave the value out (check and render).
	NameKey []byte
	// Interpolated, when set, is told every value a variable put into the compose files (agent render
	// redacts them).
	Interpolated func(value string)
	// Strict makes a variable referenced without a default (`${NAME}`, `$NAME`) that Env does not hold an
	// error naming it, instead of an empty value.
	Strict bool
	// WithoutValues loads secrets and configs whose file or environment variable is missing with no value
	// (and a warning) instead of failing: for `agent check` and `agent render`, which judge the specs and
	// never the values (a CI policy job has no production credentials). Never for apply.
	WithoutValues bool
	// SOPS decrypts the secrets whose file is SOPS-encrypted (*.sops.yaml, .yml, .json, .env, or a secret
	// with x-sawmill-sops: its key path): their value is the decrypted file or the value at the key. Nil:
	// such a secret is an error (under WithoutValues, a warning: judged without its value).
	SOPS Decrypter
}

var stackName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Load reads the compose files and converts them into a stack.
func Load(ctx context.Context, o Options) (*stack.Stack, error) {
	st, _, err := loadProject(ctx, o)
	return st, err
}

func loadProject(ctx context.Context, o Options) (*stack.Stack, *types.Project, error) {
	if len(o.Files) == 0 {
		return nil, nil, fault.InvalidErr(errors.New("no compose file given (-c FILE)"))
	}
	for _, f := range o.Files {
		if _, err := os.Stat(f); err != nil {
			return nil, nil, fault.InvalidErr(fmt.Errorf("compose file %s: %w", f, err))
		}
	}
	env := o.Env
	if env == nil {
		env = []string{}
	}
	var conf *confinement
	if o.Root != "" {
		var err error
		if conf, err = newConfinement(o); err != nil {
			return nil, nil, err
		}
		workDir := o.WorkDir
		if workDir == "" {
			workDir = filepath.Dir(o.Files[0])
		}
		if err := conf.files(absAll(o.Files), workDir); err != nil {
			return nil, nil, err
		}
		if _, err := conf.check(".env", ".env", workDir, false); err != nil {
			return nil, nil, err
		}
	}
	var opts []cli.ProjectOptionsFn
	if o.WorkDir != "" {
		opts = append(opts, cli.WithWorkingDirectory(o.WorkDir))
	}
	if o.Strict || o.Interpolated != nil {
		opts = append(opts, cli.WithLoadOptions(func(lo *loader.Options) {
			if lo.Interpolate != nil {
				lo.Interpolate.Substitute = substitute(o.Strict, o.Interpolated)
			}
		}))
	}
	if texts, err := readAll(o.Files); err == nil {
		opts = append(opts, cli.WithLoadOptions(func(lo *loader.Options) {
			if lo.Interpolate != nil {
				lo.Interpolate.TypeCastMapping = castFilter(lo.Interpolate.TypeCastMapping, texts)
			}
		}))
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
			return nil, nil, fault.InvalidErr(fmt.Errorf("stack name %q: use lower-case letters, digits, '-' and '_'", o.Stack))
		}
		opts = append(opts, cli.WithName(o.Stack))
	}
	po, err := cli.NewProjectOptions(o.Files, opts...)
	if err != nil {
		return nil, nil, fault.InvalidErr(fmt.Errorf("compose: %w", err))
	}
	project, err := po.LoadProject(ctx)
	if err != nil {
		return nil, nil, fault.InvalidErr(fmt.Errorf("compose %s: %w", strings.Join(o.Files, ", "), explain(err)))
	}
	if project.Name == "" || !stackName.MatchString(project.Name) {
		return nil, nil, fault.InvalidErr(fmt.Errorf("compose %s: no valid stack name: give STACK or a top-level `name:`", strings.Join(o.Files, ", ")))
	}
	c := &converter{project: project, files: absAll(o.Files), noValues: o.WithoutValues, conf: conf, nameKey: o.NameKey, env: o.Environment, sops: o.SOPS}
	st, err := c.convert()
	if err != nil {
		return nil, nil, fault.InvalidErr(err)
	}
	st.Environment = o.Environment
	return st, project, nil
}

// castFilter narrows compose-go's interpolation casts to a load's files (usedCasts; a test compares it with
// the whole table).
var castFilter = usedCasts

// readAll reads files (for usedCasts; compose-go reads them again, from the page cache). Only regular files: a
// pipe cannot be read twice.
func readAll(files []string) ([][]byte, error) {
	out := make([][]byte, len(files))
	for i, f := range files {
		if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", f)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
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

// UnknownVariableError is a variable that a strict load references without a default and does not have.
type UnknownVariableError struct{ Name string }

func (e *UnknownVariableError) Error() string {
	return fmt.Sprintf("variable %s is not set: a release may read only its environment's CI/CD variables and the variables the agent's configuration grants", e.Name)
}

// substitute is compose-go's substitution, except that under strict a plain reference to a missing variable
// is an error (`${NAME:-default}`, `${NAME-default}`, `${NAME:?msg}` and `${NAME:+alt}` keep their meaning),
// and that seen, when set, is told every value a variable supplies.
func substitute(strict bool, seen func(string)) func(string, template.Mapping) (string, error) {
	return func(s string, mapping template.Mapping) (string, error) {
		if seen != nil {
			inner := mapping
			mapping = func(name string) (string, bool) {
				v, ok := inner(name)
				if ok {
					seen(v)
				}
				return v, ok
			}
		}
		return template.SubstituteWithOptions(s, mapping, template.WithReplacementFunction(func(sub string, m template.Mapping, cfg *template.Config) (string, error) {
			if name, plain := plainVariable(sub); strict && plain {
				if _, ok := m(name); !ok {
					return "", &UnknownVariableError{Name: name}
				}
			}
			return template.DefaultReplacementFunc(sub, m, cfg)
		}))
	}
}

// plainVariable parses `$NAME` or `${NAME}` (nothing else in the braces).
func plainVariable(sub string) (string, bool) {
	if strings.HasPrefix(sub, "$$") {
		return "", false
	}
	name := strings.TrimPrefix(sub, "$")
	if strings.HasPrefix(name, "{") {
		end := strings.IndexByte(name, '}')
		if end < 0 {
			return "", false
		}
		name = name[1:end]
	}
	if !varName.MatchString(name) {
		return "", false
	}
	return name, true
}

var varName = regexp.MustCompile(`^[_a-zA-Z][_a-zA-Z0-9]*$`)

// Prepare compiles compose-go's JSON schema, which it does once per process, inside the first load that
// validates (10-25 ms on the benchmark machine: docs/benchmarks.md). A command about to load compose files
// runs it in a goroutine at its start, so that the compilation overlaps the process's other work instead of
// stopping the load midway; a load that gets there first waits for it, as it would have compiled it itself.
// Not when a cached stack may make the load unnecessary (LoadCached runs it when it loads): on two cores the
// compilation slowed a cached no-op apply from ~37 to ~45 ms.
func Prepare() { _ = schema.Validate(map[string]any{}) }
