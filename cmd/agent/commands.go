package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/swarm"
)

func newRoot(d deps) *cobra.Command {
	stdout, stderr := d.stdout, d.stderr
	v := viper.New()
	v.SetEnvPrefix("SAWMILL")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_", ".", "_"))
	v.AutomaticEnv()

	root := &cobra.Command{
		Use:           "agent",
		Short:         "Deploy compose stacks to a Docker Swarm, verified and policy-checked",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().String("log-format", "text", "log format: text or json")
	_ = v.BindPFlags(root.PersistentFlags())

	root.AddCommand(planCmd(v, d), applyCmd(v, d), checkCmd(v, d), renderCmd(v, d), runCmd(v, d))
	return root
}

// composeFlags adds the flags that say which compose files make the stack.
func composeFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayP("file", "c", nil, "compose file (repeat to merge several, in order)")
	f.StringArray("profile", nil, "compose profile to enable (repeatable)")
	f.String("project-directory", "", "directory for relative paths and .env (default: the first file's)")
}

func composeOptions(cmd *cobra.Command, args []string) (compose.Options, error) {
	f := cmd.Flags()
	files, _ := f.GetStringArray("file")
	profiles, _ := f.GetStringArray("profile")
	dir, _ := f.GetString("project-directory")
	if len(files) == 0 {
		return compose.Options{}, usageError{fmt.Errorf("give at least one compose file with -c")}
	}
	o := compose.Options{Files: files, Profiles: profiles, WorkDir: dir}
	if len(args) == 1 {
		o.Stack = args[0]
	}
	return o, nil
}

func planCmd(v *viper.Viper, d deps) *cobra.Command {
	stdout := d.stdout
	cmd := &cobra.Command{
		Use:   "plan -c compose.yaml [-c override.yaml ...] [STACK]",
		Short: "Show what apply would change on the swarm; makes no write call",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := prepare(v, d, cmd, args)
			if err != nil {
				return err
			}
			defer r.client.Close()
			p, err := reconcile.Plan(cmd.Context(), r.client, r.compose, r.log, r.checks...)
			if err != nil {
				return err
			}
			return output(stdout, cmd, p)
		},
	}
	composeFlags(cmd)
	cmd.Flags().StringP("output", "o", "text", "output format: text or json")
	gateFlags(cmd)
	verifyFlags(cmd)
	return cmd
}

// runSetup is what plan and apply share: the compose options, the logger, the engine and the checks.
type runSetup struct {
	compose compose.Options
	log     *slog.Logger
	client  swarm.Client
	checks  []reconcile.Check
}

func prepare(v *viper.Viper, d deps, cmd *cobra.Command, args []string) (*runSetup, error) {
	o, err := composeOptions(cmd, args)
	if err != nil {
		return nil, err
	}
	log, err := newLogger(d.stderr, v.GetString("log-level"), v.GetString("log-format"))
	if err != nil {
		return nil, err
	}
	gates, err := checks(v, cmd, log, d.stdout)
	if err != nil {
		return nil, err
	}
	c, err := d.connect()
	if err != nil {
		return nil, err
	}
	return &runSetup{compose: o, log: log, client: c, checks: gates}, nil
}

func output(w io.Writer, cmd *cobra.Command, p *plan.Plan) error {
	format, _ := cmd.Flags().GetString("output")
	switch format {
	case "text":
		return plan.Render(w, p)
	case "json":
		return plan.RenderJSON(w, p)
	}
	return usageError{fmt.Errorf("-o %q: use text or json", format)}
}

func applyCmd(v *viper.Viper, d deps) *cobra.Command {
	stdout := d.stdout
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
			defer r.client.Close()
			a := &swarm.Applier{Client: r.client, Log: r.log, Timeout: timeout}
			res, err := reconcile.Apply(cmd.Context(), a, r.compose, r.log, r.checks...)
			if res != nil && res.Plan != nil {
				if rerr := output(stdout, cmd, res.Plan); rerr != nil && err == nil {
					err = rerr
				}
				for _, s := range res.RolledBack {
					fmt.Fprintf(stdout, "rolled back: %s (the previous version keeps running)\n", s)
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, "converged")
			return nil
		},
	}
	composeFlags(cmd)
	cmd.Flags().StringP("output", "o", "text", "output format: text or json")
	gateFlags(cmd)
	verifyFlags(cmd)
	cmd.Flags().Duration("timeout", 5*time.Minute, "how long to wait for the stack to converge")
	return cmd
}
