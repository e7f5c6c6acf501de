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

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/redact"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/status"
	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/verify"
)

// runCmd is `agent run`: the daemon. Its settings are a Config (config.go).
func runCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run --config agent.yaml",
		Short: "Run as a daemon: follow the environment's releases in GitLab (or a directory) and roll them out",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			go compose.Prepare() // the first cycle loads
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
			// The age identity and the notification targets' URLs are read (and checked) before anything runs.
			sops, err := cfg.sopsDecrypter(d.redact)
			if err != nil {
				return err
			}
			targets, err := notifyTargets(cfg, d.redact)
			if err != nil {
				return err
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
				Environment:  cfg.Environment,
				Stacks:       cfg.Stacks,
				Flow:         flow,
				Env:          cfg.releaseEnv(os.LookupEnv),
				Redact:       d.redact,
				NameKey:      func(ctx context.Context) ([]byte, error) { return swarm.NameKey(ctx, c, true) },
				StateFile:    filepath.Join(cfg.StateDir, reconcile.StateFileName),
				RetryFile:    filepath.Join(cfg.StateDir, retryFile),
				HistoryDir:   filepath.Join(cfg.StateDir, reconcile.HistoryDirName),
				HistoryKeep:  cfg.History.Keep,
				RequestFile:  filepath.Join(cfg.StateDir, reconcile.RequestFileName),
				Replicas:     replicas(c),
				CycleTimeout: cfg.CycleTimeout,
				Interval:     cfg.Interval,
				Jitter:       cfg.Jitter,
				Log:          log,
				Metrics:      metrics,
				Show:         (&decisionLog{log: log}).show, // an unchanged release's decisions are logged once
			}
			if once {
				// One cycle from a terminal: print what apply prints (signatures, policy decisions, the plan).
				loop.Show = func(c *reconcile.Cycle) { printRun(d.stdout, c, flow.PolicyMode) }
			}
			if !cfg.Lease.Disabled {
				holder, err := holderID(cfg.StateDir)
				if err != nil {
					return err
				}
				lease := &swarm.Lease{Client: c, Holder: holder, TTL: cfg.Lease.TTL, Name: cfg.Lease.Name}
				loop.Lease = lease
				loop.Pins = swarmPins(c, cfg.Lease.Name, cfg.Environment, lease)
			}
			loop.Revision = revision(flow)
			if err := setSource(loop, cfg, d.redact); err != nil {
				return err
			}
			loop.SOPS = sops
			if err := loop.Init(); err != nil {
				return usageError{err}
			}
			notifier, err := newNotifier(cfg, targets, d.redact, log, loop.Last())
			if err != nil {
				return err
			}
			if notifier != nil {
				loop.Notifier = notifier
				defer notifier.stop()
			}

			ctx := cmd.Context()
			stop, err := serve(cfg, loop, metrics, d, log)
			if err != nil {
				return err
			}
			defer stop()
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
		// The daemon loads the same release every cycle: an unchanged one is answered from memory.
		Load:       &reconcile.MemoLoader{Loader: composeLoader},
		Differ:     &plan.Differ{},
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
	trust, err := cfg.Trust.Compile()
	if err != nil {
		return nil, err
	}
	flow.Verify = verify.New(trust, verify.Options{Logger: log, Timeout: cfg.RegistryTimeout})
	return flow, nil
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
		// Every call has a deadline; the client's own retries (429, 5xx) are few and short, the loop backs off.
		gc, err := gitlab.NewClient(token, gitlab.WithBaseURL(strings.TrimSuffix(g.URL, "/")+"/api/v4"),
			gitlab.WithHTTPClient(&http.Client{Timeout: g.Timeout}), gitlab.WithCustomRetryMax(2),
			gitlab.WithCustomRetryWaitMinMax(500*time.Millisecond, 5*time.Second))
		if err != nil {
			return usageError{fmt.Errorf("gitlab.url: %w", err)}
		}
		src := &source.GitLab{Client: gc, Project: g.Project, Environment: cfg.Environment}
		loop.Source = &source.Follow{GitLab: src, Dir: filepath.Join(cfg.StateDir, "releases")}
		loop.Reporter = &report.GitLab{Client: gc, Project: g.Project}
		loop.RecordDeployments = g.Deployments
		if g.Variables {
			loop.Vars = src
		}
	}
	return nil
}

// retryFile, in the state directory, asks the daemon to roll out a release that failed before (agent retry).
const retryFile = "retry"

// revision is what a rollout's decisions depend on besides the release: the policies' revision (a hash of the
// policy files) and the trust policy's.
func revision(flow *reconcile.Flow) func(ctx context.Context) string {
	return func(ctx context.Context) string {
		rev := ""
		if e, ok := flow.Policy.(*policy.Engine); ok && flow.PolicyMode != policy.ModeOff {
			rev, _ = e.Prepare(ctx)
		}
		if v, ok := flow.Verify.(*verify.Verifier); ok {
			rev += "/" + v.Trust().Revision()
		}
		return rev + "/" + string(flow.PolicyMode)
	}
}

// serve starts the HTTP listeners: the webhook (and /healthz, /readyz) on listen, /status and /metrics
// there too or on status.listen, with every timeout set and TLS when configured. stop shuts them down.
func serve(cfg *Config, loop *reconcile.Loop, m *status.Metrics, d deps, log *slog.Logger) (stop func(), err error) {
	hook, err := cfg.webhookToken()
	if err != nil {
		return nil, err
	}
	d.redact.Add(hook)
	statusToken := ""
	if cfg.Status.TokenEnv != "" {
		if statusToken = os.Getenv(cfg.Status.TokenEnv); statusToken == "" {
			return nil, usageError{fmt.Errorf("status.token_env: $%s is empty", cfg.Status.TokenEnv)}
		}
		d.redact.Add(statusToken)
	}
	type listener struct {
		addr string
		opts status.Options
	}
	var ls []listener
	if cfg.Status.Listen == "" {
		ls = append(ls, listener{cfg.Listen, status.Options{Webhook: true, Status: true, WebhookToken: hook, StatusToken: statusToken}})
	} else {
		ls = append(ls, listener{cfg.Listen, status.Options{Webhook: true, WebhookToken: hook}},
			listener{cfg.Status.Listen, status.Options{Status: true, StatusToken: statusToken}})
	}
	var servers []*http.Server
	stop = func() {
		for _, srv := range servers {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(sctx)
			cancel()
		}
	}
	for _, x := range ls {
		if x.addr == "" {
			continue
		}
		l, err := listen(x.addr)
		if err != nil {
			stop()
			return nil, fmt.Errorf("listen %s: %w", x.addr, err)
		}
		srv := status.Server(status.Handler(loop, m, x.opts))
		servers = append(servers, srv)
		if cfg.TLS.CertFile != "" {
			go srv.ServeTLS(l, cfg.TLS.CertFile, cfg.TLS.KeyFile)
		} else {
			go srv.Serve(l)
		}
		log.Info("serving", "addr", l.Addr().String(), "tls", cfg.TLS.CertFile != "", "webhook", x.opts.Webhook, "status", x.opts.Status)
	}
	return stop, nil
}

// retryCmd is `agent retry`: the daemon rolls the release out again although it failed before.
func retryCmd(d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "retry [--state-dir DIR]",
		Short: "Ask the daemon to roll out again a release that failed (it is otherwise held until it changes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, _ := cmd.Flags().GetString("state-dir")
			if err := os.WriteFile(filepath.Join(dir, retryFile), nil, 0o600); err != nil {
				return fmt.Errorf("retry: %w", err)
			}
			fmt.Fprintf(d.stdout, "the next cycle rolls the release out again (state directory %s)\n", dir)
			return nil
		},
	}
	cmd.Flags().String("state-dir", defaultConfig().StateDir, "the daemon's state directory")
	return cmd
}

// holderID names this agent in the lease: the host and an identifier kept in the state directory, so that an
// agent restarted after a crash takes its own lease back at once instead of waiting for it to expire.
func holderID(stateDir string) (string, error) {
	path := filepath.Join(stateDir, "holder")
	b, err := os.ReadFile(path)
	if err != nil {
		id := make([]byte, 6)
		_, _ = rand.Read(id)
		b = []byte(fmt.Sprintf("%x", id))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return "", fmt.Errorf("lease holder: %w", err)
		}
	}
	host, _ := os.Hostname()
	return host + "/" + strings.TrimSpace(string(b)), nil
}
