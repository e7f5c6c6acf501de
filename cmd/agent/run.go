package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/redact"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/status"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// runCmd is `agent run`: the daemon. Its settings are a Config (config.go).
func runCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run --config agent.yaml",
		Short: "Run as a daemon: follow the environment's releases in GitLab (or a directory) and roll them out",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(v, cmd)
			if err != nil {
				return err
			}
			log, err := newLogger(d, cfg.LogLevel, cfg.LogFormat)
			if err != nil {
				return err
			}
			once, _ := cmd.Flags().GetBool("once")
			if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
				return fmt.Errorf("state directory: %w", err)
			}
			c, err := d.connect()
			if err != nil {
				return err
			}
			defer c.Close()

			flow, err := newFlow(cfg, c, log)
			if err != nil {
				return err
			}
			// Values passed through from the agent's environment are secrets (the configured variables are not:
			// they are written in the configuration).
			for _, name := range cfg.PassEnv {
				v, _ := os.LookupEnv(name)
				d.redact.Add(v)
			}
			metrics := status.NewMetrics()
			loop := &reconcile.Loop{
				Environment: cfg.Environment,
				Stacks:      cfg.Stacks,
				Flow:        flow,
				Env:         cfg.releaseEnv(os.LookupEnv),
				Redact:      d.redact,
				NameKey:     func(ctx context.Context) ([]byte, error) { return swarm.NameKey(ctx, c, true) },
				StateFile:   filepath.Join(cfg.StateDir, "state.json"),
				Interval:    cfg.Interval,
				Jitter:      cfg.Jitter,
				Log:         log,
				Metrics:     metrics,
				Show:        func(c *reconcile.Cycle) { logDecisions(log, c) },
			}
			if once {
				// One cycle from a terminal: print what apply prints (signatures, policy decisions, the plan).
				loop.Show = func(c *reconcile.Cycle) { printRun(d.stdout, c, flow.PolicyMode) }
			}
			if !cfg.Lease.Disabled {
				host, _ := os.Hostname()
				nonce := make([]byte, 4)
				_, _ = rand.Read(nonce)
				loop.Lease = &swarm.Lease{Client: c, Holder: fmt.Sprintf("%s/%d/%x", host, os.Getpid(), nonce), TTL: cfg.Lease.TTL, Name: cfg.Lease.Name}
			}
			if err := setSource(loop, cfg, d.redact); err != nil {
				return err
			}
			if err := loop.Init(); err != nil {
				return usageError{err}
			}

			ctx := cmd.Context()
			if cfg.Listen != "" {
				l, err := listen(cfg.Listen)
				if err != nil {
					return fmt.Errorf("listen %s: %w", cfg.Listen, err)
				}
				hook, err := cfg.webhookToken()
				if err != nil {
					return err
				}
				d.redact.Add(hook)
				srv := &http.Server{Handler: status.Handler(loop, metrics, hook), ReadHeaderTimeout: 10 * time.Second}
				go srv.Serve(l)
				defer func() {
					sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_ = srv.Shutdown(sctx)
				}()
				log.Info("serving", "addr", l.Addr().String(), "endpoints", "/healthz /readyz /metrics /status /hooks/gitlab")
			}
			if once {
				rec := loop.Cycle(ctx)
				loop.ReleaseLease()
				if code := rec.Outcome.Row().Exit; code != 0 {
					return exitError{code: code, err: fmt.Errorf("%s: %s", rec.Outcome, rec.Reason)}
				}
				return nil
			}
			return loop.Run(ctx)
		},
	}
	f := cmd.Flags()
	def := defaultConfig()
	f.String("config", "", "config file (YAML)")
	f.String("environment", "", "the environment this agent deploys (staging, production, ...)")
	f.String("source", def.Source, "where releases come from: gitlab, git or dir")
	f.String("dir", "", "the release directory (source dir)")
	f.String("listen", def.Listen, "address of /healthz, /readyz, /metrics, /status and the webhook; empty: none")
	f.String("state-dir", def.StateDir, "where the state file and the fetched releases are kept")
	f.Duration("interval", def.Interval, "poll interval")
	f.Duration("timeout", def.Timeout, "how long one stack may take to converge")
	f.String("policy-mode", def.PolicyMode, "policy gate: enforce, warn or off")
	f.Bool("skip-verify", false, "do not verify signatures (development only)")
	f.Bool("once", false, "run one cycle and exit (exit code as apply)")
	return cmd
}

// newFlow builds the steps every stack goes through: the compose loader, the verifier (one for the daemon's
// lifetime: its cache of verified digests lives in it), the policies, the swarm.
func newFlow(cfg *Config, c swarm.Client, log *slog.Logger) (*reconcile.Flow, error) {
	mode, err := policy.ParseMode(cfg.PolicyMode)
	if err != nil {
		return nil, usageError{err}
	}
	flow := &reconcile.Flow{
		Load:       composeLoader,
		Policy:     policy.New(policy.Options{Dirs: cfg.Policies, NoDefault: cfg.NoDefaultPolicies}),
		PolicyMode: mode,
		Input: policy.InputOptions{Environment: cfg.Environment, AllowedRegistries: cfg.AllowedRegistries,
			Tier: cfg.Tier, Grants: cfg.grants(), AllowedHostPaths: cfg.AllowedHostPaths},
		Observe: swarm.Observer{Client: c},
		Apply:   &swarm.Applier{Client: c, Log: log, Timeout: cfg.Timeout},
		Log:     log,
	}
	if cfg.SkipVerify {
		log.Warn("signature verification is off (skip_verify)")
		return flow, nil
	}
	if cfg.Trust == nil {
		return nil, usageError{errNoTrust}
	}
	flow.Verify, err = newVerifier(*cfg.Trust, log)
	return flow, err
}

// setSource sets the loop's source of releases (and, for GitLab, its reporter and variables).
func setSource(loop *reconcile.Loop, cfg *Config, r *redact.Redactor) error {
	switch cfg.Source {
	case "dir":
		if cfg.Dir == "" {
			return usageError{fmt.Errorf("source dir needs dir: the release directory")}
		}
		loop.Source = source.Local{Path: cfg.Dir}
	case "git":
		if cfg.Git.URL == "" {
			return usageError{fmt.Errorf("source git needs git.url (and git.ref, git.path)")}
		}
		loop.Source = &source.Git{URL: cfg.Git.URL, Ref: cfg.Git.Ref, Path: cfg.Git.Path, Dir: filepath.Join(cfg.StateDir, "git")}
	case "gitlab":
		g := cfg.GitLab
		token := os.Getenv(g.TokenEnv)
		if g.TokenFile != "" {
			b, err := os.ReadFile(g.TokenFile)
			if err != nil {
				return usageError{fmt.Errorf("gitlab.token_file: %w", err)}
			}
			token = strings.TrimSpace(string(b))
		}
		r.Add(token)
		if token == "" || g.URL == "" || g.Project == "" {
			return usageError{fmt.Errorf("source gitlab needs gitlab.url, gitlab.project and a token in $%s or gitlab.token_file", g.TokenEnv)}
		}
		gc, err := gitlab.NewClient(token, gitlab.WithBaseURL(strings.TrimSuffix(g.URL, "/")+"/api/v4"))
		if err != nil {
			return usageError{fmt.Errorf("gitlab.url: %w", err)}
		}
		src := &source.GitLab{Client: gc, Project: g.Project, Environment: cfg.Environment}
		loop.Source = &source.Follow{GitLab: src, Dir: filepath.Join(cfg.StateDir, "releases")}
		loop.Reporter = &report.GitLab{Client: gc, Project: g.Project}
		if g.Variables {
			loop.Vars = src
		}
	}
	return nil
}
