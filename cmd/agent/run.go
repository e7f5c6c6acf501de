package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/daemon"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/verify"
)

// runSettings are the daemon's settings: a config file (--config), SAWMILL_* variables (SAWMILL_GITLAB_URL
// for gitlab.url) and flags, in rising precedence. Tokens come only from the environment or files.
func runCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run --config agent.yaml",
		Short: "Run as a daemon: follow the environment's releases in GitLab (or a directory) and roll them out",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path, _ := cmd.Flags().GetString("config"); path != "" {
				v.SetConfigFile(path)
				if err := v.ReadInConfig(); err != nil {
					return usageError{fmt.Errorf("config %s: %w", path, err)}
				}
			}
			for _, name := range []string{"environment", "source", "dir", "listen", "state-dir", "interval", "timeout", "policy-mode"} {
				_ = v.BindPFlag(flagKey(name), cmd.Flags().Lookup(name))
			}
			log, err := newLogger(d.stderr, v.GetString("log-level"), v.GetString("log-format"))
			if err != nil {
				return err
			}
			env := v.GetString("environment")
			if env == "" {
				return usageError{errors.New("environment: set it in the config file, SAWMILL_ENVIRONMENT or --environment")}
			}
			stateDir := v.GetString("state_dir")
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				return fmt.Errorf("state directory: %w", err)
			}
			c, err := d.connect()
			if err != nil {
				return err
			}
			defer c.Close()

			dm := &daemon.Daemon{
				Environment: env,
				Stacks:      v.GetStringSlice("stacks"),
				Applier:     &swarm.Applier{Client: c, Log: log, Timeout: v.GetDuration("timeout")},
				StateFile:   filepath.Join(stateDir, "state.json"),
				Interval:    v.GetDuration("interval"),
				Jitter:      v.GetFloat64("jitter"),
				Log:         log,
			}
			if !v.GetBool("lease.disabled") {
				host, _ := os.Hostname()
				nonce := make([]byte, 4)
				_, _ = rand.Read(nonce)
				dm.Lease = &swarm.Lease{Client: c, Holder: fmt.Sprintf("%s/%d/%x", host, os.Getpid(), nonce), TTL: v.GetDuration("lease.ttl")}
			}
			mode, err := policy.ParseMode(v.GetString("policy_mode"))
			if err != nil {
				return usageError{err}
			}
			gate := &policy.Gate{
				Engine: policy.New(policy.Options{Dirs: v.GetStringSlice("policies"), NoDefault: v.GetBool("no_default_policies")}),
				Mode:   mode, Input: policy.InputOptions{Environment: env, AllowedRegistries: v.GetStringSlice("allowed_registries")}, Log: log,
			}
			if v.GetBool("once") {
				// One cycle from a terminal: print what apply prints (signatures, policy decisions, the plan).
				gate.Out, dm.Out = d.stdout, d.stdout
			}
			dm.Checks = []reconcile.Check{gate.Check}
			if skip, _ := cmd.Flags().GetBool("skip-verify"); skip || v.GetBool("skip_verify") {
				log.Warn("signature verification is off (skip_verify)")
			} else {
				trust, err := loadTrust(v)
				if err != nil {
					return err
				}
				// One verifier for the daemon's lifetime: its cache of verified digests lives in it.
				sigs := &reconcile.Signatures{Verifier: verify.New(trust, verify.Options{Logger: log}), Log: log, Out: dm.Out}
				gate.Signatures = sigs.Results
				dm.Checks = []reconcile.Check{sigs.Check, gate.Check}
			}

			switch kind := v.GetString("source"); kind {
			case "dir":
				if v.GetString("dir") == "" {
					return usageError{errors.New("source dir needs dir: the release directory")}
				}
				dm.Source = source.Local{Path: v.GetString("dir")}
			case "git":
				if v.GetString("git.url") == "" {
					return usageError{errors.New("source git needs git.url (and git.ref, git.path)")}
				}
				dm.Source = &source.Git{URL: v.GetString("git.url"), Ref: v.GetString("git.ref"), Path: v.GetString("git.path"), Dir: filepath.Join(stateDir, "git")}
			case "gitlab":
				token := os.Getenv(v.GetString("gitlab.token_env"))
				if f := v.GetString("gitlab.token_file"); f != "" {
					b, err := os.ReadFile(f)
					if err != nil {
						return usageError{fmt.Errorf("gitlab.token_file: %w", err)}
					}
					token = strings.TrimSpace(string(b))
				}
				if token == "" || v.GetString("gitlab.url") == "" || v.GetString("gitlab.project") == "" {
					return usageError{fmt.Errorf("source gitlab needs gitlab.url, gitlab.project and a token in $%s or gitlab.token_file", v.GetString("gitlab.token_env"))}
				}
				gc, err := gitlab.NewClient(token, gitlab.WithBaseURL(strings.TrimSuffix(v.GetString("gitlab.url"), "/")+"/api/v4"))
				if err != nil {
					return usageError{fmt.Errorf("gitlab.url: %w", err)}
				}
				g := &source.GitLab{Client: gc, Project: v.GetString("gitlab.project"), Environment: env}
				dm.Source = &source.Follow{GitLab: g, Dir: filepath.Join(stateDir, "releases")}
				dm.Reporter = &report.GitLab{Client: gc, Project: g.Project}
				if v.GetBool("gitlab.variables") {
					dm.Vars = g.Variables
				}
			default:
				return usageError{fmt.Errorf("source %q: use gitlab, git or dir", kind)}
			}
			if _, err := daemon.New(dm); err != nil {
				return usageError{err}
			}

			ctx := cmd.Context()
			if addr := v.GetString("listen"); addr != "" {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					return fmt.Errorf("listen %s: %w", addr, err)
				}
				srv := &http.Server{Handler: dm.Handler(os.Getenv(v.GetString("webhook.token_env"))), ReadHeaderTimeout: 10 * time.Second}
				go srv.Serve(l)
				defer func() {
					sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_ = srv.Shutdown(sctx)
				}()
				log.Info("serving", "addr", l.Addr().String(), "endpoints", "/healthz /readyz /metrics /status /hooks/gitlab")
			}
			if v.GetBool("once") {
				rec := dm.Cycle(ctx)
				if dm.Lease != nil {
					_ = dm.Lease.Release(ctx)
				}
				err := fmt.Errorf("%s: %s", rec.Outcome, rec.Reason)
				switch rec.Outcome {
				case "success", "standby":
					return nil
				case "refused":
					return fault.RefusedErr(err)
				case "invalid":
					return fault.InvalidErr(err)
				case "failed":
					return fault.RolloutErr(err)
				}
				return err
			}
			return dm.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.String("config", "", "config file (YAML)")
	f.String("environment", "", "the environment this agent deploys (staging, production, ...)")
	f.String("source", "gitlab", "where releases come from: gitlab, git or dir")
	f.String("dir", "", "the release directory (source dir)")
	f.String("listen", "127.0.0.1:9090", "address of /healthz, /readyz, /metrics, /status and the webhook; empty: none")
	f.String("state-dir", "/var/lib/sawmill-agent", "where the state file and the fetched releases are kept")
	f.Duration("interval", time.Minute, "poll interval")
	f.Duration("timeout", 5*time.Minute, "how long one stack may take to converge")
	f.String("policy-mode", "enforce", "policy gate: enforce, warn or off")
	f.Bool("skip-verify", false, "do not verify signatures (development only)")
	f.Bool("once", false, "run one cycle and exit (exit code as apply)")
	_ = v.BindPFlag("once", f.Lookup("once"))
	v.SetDefault("jitter", 0.1)
	v.SetDefault("git.ref", "main")
	v.SetDefault("git.path", "release")
	v.SetDefault("gitlab.token_env", "SAWMILL_GITLAB_TOKEN")
	v.SetDefault("webhook.token_env", "SAWMILL_WEBHOOK_TOKEN")
	v.SetDefault("lease.ttl", 30*time.Second)
	return cmd
}

// flagKey maps a flag name to its config key (state-dir -> state_dir).
func flagKey(flag string) string { return strings.ReplaceAll(flag, "-", "_") }
