package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/notify"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/redact"
)

// NotifyConfig is one notification target of agent.yaml's `notify:` list. Its URL is a secret (a Slack or
// Teams webhook URL is its credential): it comes from the file URLFile or the environment variable URLEnv,
// never from the configuration itself, and is never logged.
type NotifyConfig struct {
	Name string `mapstructure:"name"`
	// Kind is the payload: webhook (the event as JSON), slack, mattermost or teams.
	Kind    string `mapstructure:"kind"`
	URLFile string `mapstructure:"url_file"`
	URLEnv  string `mapstructure:"url_env"`
	// Template is a text/template over notify.Event for the message's text; empty: notify.DefaultTemplate.
	Template string `mapstructure:"template"`
	// On are the events sent: failure, recovery, refusal, drift; empty: all of them.
	On []string `mapstructure:"on"`
}

// SOPSConfig is the age identity that decrypts a release's SOPS-encrypted secret files.
type SOPSConfig struct {
	// AgeKeyFile is the agent's age identity file (AGE-SECRET-KEY-1... lines), readable by the agent only.
	AgeKeyFile string `mapstructure:"age_key_file"`
	// Helper is the decrypting helper cmd/sawmill-sops (sops.go); empty: sawmill-sops next to the agent's
	// executable, else in PATH.
	Helper string `mapstructure:"helper"`
}

// validateNotify checks the notify targets, naming the key of each error.
func (c *Config) validateNotify() []error {
	var errs []error
	names := map[string]bool{}
	for i, n := range c.Notify {
		at := fmt.Sprintf("notify[%d]", i)
		bad := func(key, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s.%s: "+format, append([]any{at, key}, args...)...))
		}
		if n.Name == "" {
			bad("name", "missing: name the target (it names it in the logs; its URL never is)")
		} else if names[n.Name] {
			bad("name", "%q: two targets have this name", n.Name)
		}
		names[n.Name] = true
		if !slices.Contains(notify.Formats, n.Kind) {
			bad("kind", "%q: use %s", n.Kind, strings.Join(notify.Formats, ", "))
		}
		if (n.URLFile == "") == (n.URLEnv == "") {
			bad("url_file", "give url_file or url_env (one of them): the URL is a secret, never in the configuration")
		}
		if n.Template != "" {
			if _, err := notify.ParseTemplate(n.Name, n.Template); err != nil {
				bad("template", "%w", err)
			}
		}
		for _, on := range n.On {
			if !slices.Contains(notify.Kinds, notify.Kind(on)) {
				bad("on", "%q: use failure, recovery, refusal or drift", on)
			}
		}
	}
	return errs
}

// targetURL reads a target's URL from its file or environment variable and checks it, without ever putting
// it in an error.
func (n NotifyConfig) targetURL(i int) (string, error) {
	var raw string
	if n.URLFile != "" {
		b, err := os.ReadFile(n.URLFile)
		if err != nil {
			return "", usageError{fmt.Errorf("notify[%d].url_file: %w", i, err)}
		}
		raw = strings.TrimSpace(string(b))
	} else if raw = strings.TrimSpace(os.Getenv(n.URLEnv)); raw == "" {
		return "", usageError{fmt.Errorf("notify[%d].url_env: $%s is empty", i, n.URLEnv)}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", usageError{fmt.Errorf("notify[%d] (%s): the URL is not an http(s) URL", i, n.Name)}
	}
	return raw, nil
}

// agentNotifier hands the loop's cycles to a notify.Notifier (reconcile.Notifier).
type agentNotifier struct {
	n      *notify.Notifier
	cancel context.CancelFunc
}

// notifyTargets reads the configured targets' URLs (r learns them) and templates.
func notifyTargets(cfg *Config, r *redact.Redactor) ([]notify.Target, error) {
	var targets []notify.Target
	for i, nc := range cfg.Notify {
		u, err := nc.targetURL(i)
		if err != nil {
			return nil, err
		}
		r.Add(u)
		t := notify.Target{Name: nc.Name, Format: nc.Kind, URL: u}
		if nc.Template != "" {
			if t.Template, err = notify.ParseTemplate(nc.Name, nc.Template); err != nil {
				return nil, usageError{fmt.Errorf("notify[%d].template: %w", i, err)}
			}
		}
		for _, on := range nc.On {
			t.On = append(t.On, notify.Kind(on))
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// newNotifier builds and starts the targets' notifier, told the outcome on record (the state file's) so a
// failure notified before a restart is not sent again; nil when no target is configured.
func newNotifier(cfg *Config, targets []notify.Target, r *redact.Redactor, log *slog.Logger, last reconcile.Record) (*agentNotifier, error) {
	if len(targets) == 0 {
		return nil, nil
	}
	n, err := notify.New(notify.Options{Environment: cfg.Environment, Targets: targets, Redact: r, Log: log.With("component", "notify")})
	if err != nil {
		return nil, usageError{err}
	}
	n.Seed(string(last.Outcome), last.Reason)
	ctx, cancel := context.WithCancel(context.Background())
	n.Start(ctx)
	return &agentNotifier{n: n, cancel: cancel}, nil
}

// Notify implements reconcile.Notifier.
func (a *agentNotifier) Notify(rec reconcile.Record, stacks []reconcile.StackOutcome) {
	c := notify.Cycle{Release: rec.Release, Commit: rec.Commit, Outcome: string(rec.Outcome), Reason: rec.Reason, Time: rec.Time}
	for _, s := range stacks {
		if s.Outcome != outcome.Success {
			c.Stacks = append(c.Stacks, s.Stack)
		}
		c.Drift = append(c.Drift, s.Drift...)
	}
	a.n.Observe(c)
}

// stop sends what is queued (within a few seconds) and stops the senders.
func (a *agentNotifier) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a.n.Drain(ctx)
	a.cancel()
}

// sopsDecrypter is the decrypter of the configured age identity; nil without sops.age_key_file.
func (c *Config) sopsDecrypter(r *redact.Redactor) (compose.Decrypter, error) {
	if c.SOPS.AgeKeyFile == "" {
		return nil, nil
	}
	d, err := newSOPSDecrypter(c.SOPS, r)
	if err != nil {
		return nil, usageError{err}
	}
	return d, nil
}
