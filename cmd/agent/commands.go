package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// newRootViper is the settings' reader: flags bound per command, SAWMILL_* variables (gitlab.url:
// SAWMILL_GITLAB_URL), and for `agent run` a config file.
func newRootViper() *viper.Viper {
	v := viper.New()
	v.SetEnvPrefix("SAWMILL")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_", ".", "_"))
	v.AutomaticEnv()
	return v
}

func newRoot(d deps) *cobra.Command {
	v := newRootViper()

	root := &cobra.Command{
		Use:           "agent",
		Short:         "Deploy compose stacks to a Docker Swarm, verified and policy-checked",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(d.stdout)
	root.SetErr(d.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.String("log-level", "info", "log level: debug, info, warn, error")
	pf.String("log-format", "text", "log format: text or json")
	_ = v.BindPFlag("log_level", pf.Lookup("log-level"))
	_ = v.BindPFlag("log_format", pf.Lookup("log-format"))

	root.AddCommand(planCmd(v, d), applyCmd(v, d), checkCmd(v, d), renderCmd(v, d), runCmd(v, d), retryCmd(d))
	root.AddCommand(historyCmd(d), rollbackCmd(d), unpinCmd(d))
	root.AddCommand(healthcheckCmd(d), installCmd(v, d), uninstallCmd(d), versionCmd(d))
	return root
}

// composeLoader is the flow's load step: compose-go, converted as `docker stack deploy` converts.
var composeLoader = reconcile.LoadFunc(compose.Load)

// composeFlags adds the flags that say which compose files make the stack.
func composeFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayP("file", "c", nil, "compose file (repeat to merge several, in order)")
	f.StringArray("profile", nil, "compose profile to enable (repeatable)")
	f.String("project-directory", "", "directory for relative paths and .env (default: the first file's)")
}

// composeOptions are the compose files of the command line, interpolated with the process environment
// (plan, apply, check and render run from a terminal or a CI job).
func composeOptions(cmd *cobra.Command, args []string) (compose.Options, error) {
	f := cmd.Flags()
	files, _ := f.GetStringArray("file")
	profiles, _ := f.GetStringArray("profile")
	dir, _ := f.GetString("project-directory")
	if len(files) == 0 {
		return compose.Options{}, usageError{fmt.Errorf("give at least one compose file with -c")}
	}
	o := compose.Options{Files: files, Profiles: profiles, WorkDir: dir, Env: os.Environ()}
	if len(args) == 1 {
		o.Stack = args[0]
	}
	return o, nil
}

func planCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan -c compose.yaml [-c override.yaml ...] [STACK]",
		Short: "Show what apply would change on the swarm; makes no write call",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := prepare(v, d, cmd, args)
			if err != nil {
				return err
			}
			defer r.close()
			if err := r.nameKey(cmd.Context(), false); err != nil {
				return err
			}
			c := r.flow.Run(cmd.Context(), r.compose)
			r.show(c)
			if c.Err != nil {
				return c.Err
			}
			return r.output(c.Plan)
		},
	}
	composeFlags(cmd)
	cmd.Flags().StringP("output", "o", "text", "output format: text or json")
	gateFlags(cmd)
	verifyFlags(cmd)
	return cmd
}

// runSetup is what plan and apply share: the compose options, the engine, the flow (without its apply
// step) and how the result is shown.
type runSetup struct {
	compose compose.Options
	log     *slog.Logger
	client  swarm.Client
	flow    *reconcile.Flow
	stdout  io.Writer
	format  string
}

func prepare(v *viper.Viper, d deps, cmd *cobra.Command, args []string) (*runSetup, error) {
	o, err := composeOptions(cmd, args)
	if err != nil {
		return nil, err
	}
	if dir, _ := cmd.Flags().GetString("cache-dir"); dir == "" {
		go compose.Prepare() // with a cache directory, LoadCached starts it on a miss
	}
	log, err := newLogger(d, v.GetString("log_level"), v.GetString("log_format"))
	if err != nil {
		return nil, err
	}
	format, _ := cmd.Flags().GetString("output")
	if format != "text" && format != "json" {
		return nil, usageError{fmt.Errorf("-o %q: use text or json", format)}
	}
	gate, err := readGate(v, cmd)
	if err != nil {
		return nil, err
	}
	o.Environment = gate.input.Environment
	flow := &reconcile.Flow{Load: composeLoader, PolicyMode: gate.mode, Input: gate.input, Log: log}
	if gate.mode != "off" {
		engine := gate.engine()
		// Compile the policies while the compose files load; Evaluate reuses the result (or reports its error).
		go func() { _, _ = engine.Prepare(cmd.Context()) }()
		flow.Policy = engine
	}
	if skip, _ := cmd.Flags().GetBool("skip-verify"); skip {
		log.Warn("signature verification is off (--skip-verify)")
	} else {
		p, err := readTrust(cmd)
		if err != nil {
			return nil, err
		}
		if p == nil {
			return nil, usageError{errNoTrust}
		}
		if flow.Verify, err = newVerifier(*p, log); err != nil {
			return nil, err
		}
	}
	c, err := d.connect()
	if err != nil {
		return nil, err
	}
	// One stack, once: its secrets and configs are listed by the engine's filters, not the whole swarm's.
	flow.Observe = swarm.Observer{Client: c, ByStack: true}
	return &runSetup{compose: o, log: log, client: c, flow: flow, stdout: d.stdout, format: format}, nil
}

// close closes the engine's client.
func (r *runSetup) close() { r.client.Close() }

// nameKey reads the swarm's key for secret and config names; apply makes it when the swarm has none. Plan
// writes nothing: before the first apply it names secrets with a key of its own (apply will name them anew).
// The engine must be a swarm manager; it is asked only when the name key cannot be read (the config list
// fails on an engine that is not one), saving a round trip on every run.
func (r *runSetup) nameKey(ctx context.Context, create bool) error {
	key, err := swarm.NameKey(ctx, r.client, create)
	if err != nil && !errors.Is(err, swarm.ErrNoNameKey) && ctx.Err() == nil {
		if cerr := swarm.CheckManager(ctx, r.client); errors.Is(cerr, swarm.ErrNotManager) {
			return fault.InvalidErr(cerr)
		}
	}
	if errors.Is(err, swarm.ErrNoNameKey) {
		key = make([]byte, 32)
		_, err = rand.Read(key)
	}
	if err != nil {
		return err
	}
	r.compose.NameKey = key
	return nil
}

// show prints the gates' findings with text output, and logs the policy decisions otherwise.
func (r *runSetup) show(c *reconcile.Cycle) {
	if r.format == "text" {
		printChecks(r.stdout, c, r.flow.PolicyMode)
	} else {
		logDecisions(r.log, c)
	}
}

func (r *runSetup) output(p *plan.Plan) error {
	if r.format == "json" {
		return plan.RenderJSON(r.stdout, p)
	}
	return plan.Render(r.stdout, p)
}

func applyCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apply -c compose.yaml [-c override.yaml ...] [STACK]",
		Short: "Apply the plan and wait until the stack converged; roll back a failed update",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			timeout, _ := cmd.Flags().GetDuration("timeout")
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout must be positive")}
			}
			r, err := prepare(v, d, cmd, args)
			if err != nil {
				return err
			}
			defer r.close()
			applier := &swarm.Applier{Client: r.client, Log: r.log, Timeout: timeout}
			r.flow.Apply = applier
			if err := r.nameKey(cmd.Context(), true); err != nil {
				return err
			}
			var kept *planCache
			if dir, _ := cmd.Flags().GetString("cache-dir"); dir != "" {
				kept = &planCache{dir: dir, nameKey: r.compose.NameKey, differ: &plan.Differ{}, log: r.log}
				r.flow.Load, r.flow.Apply, r.flow.Differ = cachedLoader(dir, kept), valueCheck{next: applier}, kept.differ
			}
			c := r.flow.Run(cmd.Context(), r.compose)
			if errors.Is(c.Err, errNeedsValues) {
				r.log.Debug("the plan creates a secret or config: loading the compose files again")
				r.flow.Load, r.flow.Apply = composeLoader, applier
				c = r.flow.Run(cmd.Context(), r.compose)
			}
			if kept != nil && c.Plan != nil {
				kept.write()
			}
			r.show(c)
			err = c.Err
			if res := c.Result; res != nil && res.Plan != nil {
				if rerr := r.output(res.Plan); rerr != nil && err == nil {
					err = rerr
				}
				for _, s := range res.RolledBack {
					fmt.Fprintf(r.stdout, "rolled back: %s (the previous version runs again)\n", s)
				}
				for _, s := range res.Removed {
					fmt.Fprintf(r.stdout, "removed: %s (new, it never converged)\n", s)
				}
				for _, s := range res.NotRolledBack {
					fmt.Fprintf(r.stdout, "NOT rolled back: %s\n", s)
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(r.stdout, "converged")
			return nil
		},
	}
	composeFlags(cmd)
	cmd.Flags().StringP("output", "o", "text", "output format: text or json")
	gateFlags(cmd)
	verifyFlags(cmd)
	cmd.Flags().Duration("timeout", 5*time.Minute, "how long to wait for the stack to converge")
	cmd.Flags().String("cache-dir", "", "keep loaded stacks in this directory (never secret or config contents, never a value from the environment; keyed with the swarm's name key)")
	return cmd
}
