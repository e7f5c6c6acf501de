package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/policy"
)

// inputFlags add what goes into the policy input document besides the stack.
func inputFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.String("env", "", "environment name (staging, production, ...) the policies see as input.environment")
	f.StringArray("allowed-registry", nil, "registry host or host/path prefix images may come from (repeatable; none: not checked)")
	f.String("tier", "", "the environment's tier: production turns the production rules on (default: production when --env is production)")
	f.StringArray("grant", nil, "RULE:SERVICE: the platform grants the stack's SERVICE (* for all) an exception from RULE, or the role edge (repeatable)")
	f.StringArray("allowed-host-path", nil, "host path bind mounts may expose (repeatable; none by default)")
}

// cacheFlag adds --cache-dir (check and render): loaded stacks are kept there, never with a value from outside
// the compose files (internal/compose.LoadCached says which loads are kept).
func cacheFlag(cmd *cobra.Command) {
	cmd.Flags().String("cache-dir", "", "keep loaded stacks in this directory, keyed by the files, options and agent build; loads that took a value from the environment, a .env or env_file are never kept (SAWMILL_CACHE_DIR)")
}

// policyFlags add the flags that say which policies run.
func policyFlags(cmd *cobra.Command) {
	inputFlags(cmd)
	f := cmd.Flags()
	f.StringArray("policies", nil, "extra policy directory, rego package main (repeatable)")
	f.Bool("no-default-policies", false, "leave out the default policy set built into the agent")
}

// preReleaseFlag marks the pipeline's check of the repository's files, before the release pins and signs.
func preReleaseFlag(cmd *cobra.Command) {
	cmd.Flags().String("pre-release", "", "the release registry: check the repository's files before the release (its images are pinned by the release; signatures are verified when the agent deploys)")
}

// gateFlags add the policy flags of plan and apply.
func gateFlags(cmd *cobra.Command) {
	policyFlags(cmd)
	cmd.Flags().String("policy-mode", string(policy.ModeEnforce), "off, warn (report denies, refuse nothing) or enforce (a deny refuses: exit 3)")
}

// gateSettings are the policy settings of plan, apply, check and render: each a flag, or the SAWMILL_*
// variable of the same name (SAWMILL_POLICY_MODE, SAWMILL_POLICIES, SAWMILL_ENV, ...) when the flag is not given.
type gateSettings struct {
	mode      policy.Mode
	dirs      []string
	noDefault bool
	input     policy.InputOptions
}

func readGate(v *viper.Viper, cmd *cobra.Command) (*gateSettings, error) {
	for _, name := range []string{"policy-mode", "policies", "no-default-policies", "env", "allowed-registry", "tier", "grant", "allowed-host-path"} {
		if f := cmd.Flags().Lookup(name); f != nil {
			_ = v.BindPFlag(name, f)
		}
	}
	g := &gateSettings{
		mode:      policy.ModeEnforce,
		dirs:      v.GetStringSlice("policies"),
		noDefault: v.GetBool("no-default-policies"),
		input: policy.InputOptions{Environment: v.GetString("env"), AllowedRegistries: v.GetStringSlice("allowed-registry"),
			Tier: v.GetString("tier"), AllowedHostPaths: v.GetStringSlice("allowed-host-path")},
	}
	if g.input.Tier == "" && g.input.Environment == policy.TierProduction {
		g.input.Tier = policy.TierProduction
	}
	for _, s := range v.GetStringSlice("grant") {
		rule, service, ok := strings.Cut(s, ":")
		if !ok || rule == "" || service == "" {
			return nil, usageError{fmt.Errorf("--grant %q: use RULE:SERVICE", s)}
		}
		g.input.Grants = append(g.input.Grants, policy.Grant{Rule: rule, Service: service})
	}
	if cmd.Flags().Lookup("policy-mode") != nil {
		mode, err := policy.ParseMode(v.GetString("policy-mode"))
		if err != nil {
			return nil, usageError{err}
		}
		g.mode = mode
	}
	return g, nil
}

// engine is the policy engine of these settings.
func (g *gateSettings) engine() *policy.Engine {
	return policy.New(policy.Options{Dirs: g.dirs, NoDefault: g.noDefault})
}

// loadInput loads the compose files and builds the policy input document.
func loadInput(v *viper.Viper, cmd *cobra.Command, args []string, seen func(string)) (*policy.Input, error) {
	o, err := composeOptions(cmd, args)
	if err != nil {
		return nil, err
	}
	o.Interpolated = seen
	o.WithoutValues = true // the policies judge specs, never values
	var cacheDir string
	if f := cmd.Flags().Lookup("cache-dir"); f != nil {
		_ = v.BindPFlag("cache-dir", f)
		cacheDir = v.GetString("cache-dir")
	}
	st, _, err := compose.LoadCached(cmd.Context(), o, cacheDir)
	if err != nil {
		return nil, err
	}
	g, err := readGate(v, cmd)
	if err != nil {
		return nil, err
	}
	opts := g.input
	opts.PreRelease, _ = cmd.Flags().GetString("pre-release")
	if opts.Signatures, err = checkSignatures(cmd, st); err != nil {
		return nil, err
	}
	return policy.NewInput(st, opts), nil
}

func checkCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check -c compose.yaml [-c override.yaml ...] [--policies DIR ...] [--env NAME] [-o text|json|junit] [STACK]",
		Short: "Evaluate the policies on a stack; no Docker and no network needed (exit 3 when denied)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			format, _ := cmd.Flags().GetString("output")
			var write func(io.Writer, *policy.Report) error
			switch format {
			case "text":
				write = policy.WriteText
			case "json":
				write = policy.WriteJSON
			case "junit":
				write = policy.WriteJUnit
			default:
				return usageError{fmt.Errorf("-o %q: use text, json or junit", format)}
			}
			// The policies compile while the compose files load; Evaluate reuses what Prepare made.
			g, err := readGate(v, cmd)
			if err != nil {
				return err
			}
			engine := g.engine()
			go func() { _, _ = engine.Prepare(cmd.Context()) }()
			in, err := loadInput(v, cmd, args, nil)
			if err != nil {
				return err
			}
			rep, err := engine.Evaluate(cmd.Context(), in)
			if err != nil {
				return err
			}
			if err := write(d.stdout, rep); err != nil {
				return err
			}
			if n := len(rep.Denies()); n > 0 {
				return refusedSummary(rep)
			}
			return nil
		},
	}
	composeFlags(cmd)
	cacheFlag(cmd)
	policyFlags(cmd)
	trustFlag(cmd)
	preReleaseFlag(cmd)
	cmd.Flags().StringP("output", "o", "text", "output format: text, json or junit (a GitLab test report)")
	return cmd
}

// refusedSummary is the error of a check with denies: the report names them already, so it stays short.
func refusedSummary(rep *policy.Report) error {
	err := rep.Err()
	if err == nil {
		return nil
	}
	return &shortError{msg: fmt.Sprintf("policy denied stack %s: %d denies, %d warnings", rep.Stack, len(rep.Denies()), len(rep.Warns())), err: err}
}

// shortError prints msg and keeps err's classification.
type shortError struct {
	msg string
	err error
}

func (s *shortError) Error() string { return s.msg }
func (s *shortError) Unwrap() error { return s.err }
