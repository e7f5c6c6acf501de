// Package daemon is the agent's long-running mode: every poll interval (or at once, when GitLab's webhook
// says a deployment happened) the one agent holding the swarm's lease fetches the release of its
// environment, reconciles every stack of it through internal/reconcile (with the signature and policy
// checks), reports the outcome to GitLab, and records it in a small state file. A GitLab or registry outage
// changes nothing on the swarm: the running version stays. It serves /healthz, /readyz, /metrics and the
// webhook.
//
// In: a source of releases, an applier, checks, a reporter, a lease. Out: one Record per cycle. It imports
// internal/source, internal/reconcile, internal/swarm, internal/compose, internal/report, internal/fault.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// Reporter sends outcomes back (GitLab's commit status API, say).
type Reporter interface {
	Report(ctx context.Context, o report.Outcome) error
}

// Daemon runs cycles. Fill the fields; New checks them and sets defaults.
type Daemon struct {
	Environment string
	Source      source.Latest
	// Stacks limits the stacks applied; empty means every stack of the release.
	Stacks  []string
	Applier *swarm.Applier
	Checks  []reconcile.Check
	// Vars adds KEY=VALUE pairs to the environment compose files are interpolated with (GitLab CI/CD
	// variables of the environment). Optional.
	Vars func(ctx context.Context) ([]string, error)
	// Lease elects the one agent that acts; nil means this agent always acts.
	Lease    *swarm.Lease
	Reporter Reporter
	// StateFile keeps the last outcome across restarts. Optional.
	StateFile string
	Interval  time.Duration
	// Jitter spreads polls: each wait is Interval * (1 ± Jitter).
	Jitter  float64
	Log     *slog.Logger
	Metrics *Metrics
	// Out receives each stack's plan as text once it is applied (agent run --once). Nil: logged only.
	Out io.Writer

	trigger chan struct{}
	mu      sync.Mutex
	last    Record
	ready   bool
}

// Record is the status of one cycle.
type Record struct {
	Time    time.Time `json:"time"`
	Release string    `json:"release,omitempty"`
	Commit  string    `json:"commit,omitempty"`
	// Outcome: success, failed, refused, invalid, standby, or error (the source or the engine could not be
	// reached; nothing changed).
	Outcome string `json:"outcome"`
	Reason  string `json:"reason,omitempty"`
}

// New checks d and fills its defaults.
func New(d *Daemon) (*Daemon, error) {
	if d.Source == nil || d.Applier == nil || d.Environment == "" {
		return nil, errors.New("daemon: a source, an applier and an environment are needed")
	}
	if d.Interval <= 0 {
		d.Interval = time.Minute
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics()
	}
	d.trigger = make(chan struct{}, 1)
	if d.StateFile != "" {
		if b, err := os.ReadFile(d.StateFile); err == nil {
			_ = json.Unmarshal(b, &d.last)
		}
	}
	return d, nil
}

// Trigger asks for a cycle now (the webhook calls it); it never blocks.
func (d *Daemon) Trigger() {
	select {
	case d.trigger <- struct{}{}:
	default:
	}
}

// Last returns the last cycle's record.
func (d *Daemon) Last() Record {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// Ready reports whether a cycle finished since the start (applied, refused or standing by).
func (d *Daemon) Ready() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ready
}

// Run cycles until ctx ends. After an error (the source or the engine unreachable) it waits with
// exponential backoff, never longer than the interval.
func (d *Daemon) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	for {
		rec := d.Cycle(ctx)
		wait := d.jittered()
		if rec.Outcome == "error" {
			if backoff == 0 {
				backoff = time.Second
			} else {
				backoff *= 2
			}
			wait = min(backoff, wait)
		} else {
			backoff = 0
		}
		select {
		case <-ctx.Done():
			if d.Lease != nil {
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = d.Lease.Release(rctx)
				cancel()
			}
			return nil
		case <-d.trigger:
			d.Log.Info("sync triggered")
		case <-time.After(wait):
		}
	}
}

func (d *Daemon) jittered() time.Duration {
	if d.Jitter <= 0 {
		return d.Interval
	}
	f := 1 + d.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d.Interval) * f)
}

// Cycle runs the steps once, in order: lease, release, variables, every stack (load, check, plan, apply,
// converge), report, record.
func (d *Daemon) Cycle(ctx context.Context) Record {
	start := time.Now()
	rec := d.cycle(ctx)
	rec.Time = time.Now().UTC()
	d.Metrics.observe(rec, time.Since(start))
	d.mu.Lock()
	prev := d.last
	d.last = rec
	d.ready = d.ready || rec.Outcome != "error"
	d.mu.Unlock()

	changed := rec.Release != prev.Release || rec.Outcome != prev.Outcome || rec.Reason != prev.Reason
	if changed && rec.Commit != "" && d.Reporter != nil && rec.Outcome != "standby" && rec.Outcome != "error" {
		state, reason := report.Success, "deployed"
		if rec.Outcome != "success" {
			state, reason = report.Failed, rec.Outcome+": "+rec.Reason
		}
		if err := d.Reporter.Report(ctx, report.Outcome{Environment: d.Environment, Commit: rec.Commit, State: state, Reason: reason}); err != nil {
			d.Log.Error("report to GitLab failed", "err", err)
		}
	}
	if changed && d.StateFile != "" && rec.Outcome != "error" {
		if err := writeState(d.StateFile, rec); err != nil {
			d.Log.Error("state file", "err", err)
		}
	}
	level := slog.LevelInfo
	if rec.Outcome != "success" && rec.Outcome != "standby" {
		level = slog.LevelError
	}
	d.Log.Log(ctx, level, "cycle", "outcome", rec.Outcome, "release", rec.Release, "commit", rec.Commit, "reason", rec.Reason, "duration", time.Since(start).Round(time.Millisecond))
	return rec
}

func (d *Daemon) cycle(ctx context.Context) Record {
	if d.Lease != nil {
		held, holder, err := d.Lease.Acquire(ctx)
		if err != nil {
			return Record{Outcome: "error", Reason: err.Error()}
		}
		d.Metrics.leader(held)
		if !held {
			return Record{Outcome: "standby", Reason: "agent " + holder + " holds the lease"}
		}
		// A rollout can outlast the lease: renew it while the cycle runs, and stop the cycle if it is lost.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go d.keepLease(ctx, cancel)
	}
	rel, key, err := d.Source.Latest(ctx)
	if err != nil {
		if errors.Is(err, source.ErrNoDeployment) {
			return Record{Outcome: "standby", Reason: err.Error()}
		}
		if fault.KindOf(err) == fault.Invalid {
			return Record{Outcome: "invalid", Release: key, Reason: err.Error()}
		}
		return Record{Outcome: "error", Reason: "source: " + err.Error()}
	}
	rec := Record{Release: key, Commit: rel.Manifest.Commit}
	env := os.Environ()
	if d.Vars != nil {
		vars, err := d.Vars(ctx)
		if err != nil {
			return Record{Outcome: "error", Release: key, Commit: rec.Commit, Reason: "variables: " + err.Error()}
		}
		env = append(env, vars...)
	}
	stacks := d.Stacks
	if len(stacks) == 0 {
		stacks = rel.Manifest.StackNames()
	}
	var failures []string
	worst := fault.Kind(-1)
	for _, name := range stacks {
		files, err := rel.Files(name, d.Environment)
		if err == nil {
			var res *swarm.Result
			res, err = reconcile.Apply(ctx, d.Applier, compose.Options{Files: files, Stack: name, Env: env, WorkDir: filepath.Dir(files[0])}, d.Log, d.Checks...)
			if res != nil && res.Plan != nil {
				d.Metrics.applied(res.Plan)
				if d.Out != nil {
					_ = plan.Render(d.Out, res.Plan)
				}
			}
		}
		if err != nil {
			k := fault.KindOf(err)
			if k > worst || worst < 0 {
				worst = k
			}
			failures = append(failures, name+": "+err.Error())
			d.Metrics.rejected(k)
		}
	}
	switch {
	case len(failures) == 0:
		rec.Outcome = "success"
	case worst == fault.Refused:
		rec.Outcome = "refused"
	case worst == fault.Invalid:
		rec.Outcome = "invalid"
	case worst == fault.Rollout:
		rec.Outcome = "failed"
	default:
		rec.Outcome = "error"
	}
	rec.Reason = strings.Join(failures, "; ")
	return rec
}

// keepLease renews the lease every third of its TTL until ctx ends; when a renewal fails it cancels the
// cycle, so that two agents never act at once.
func (d *Daemon) keepLease(ctx context.Context, cancel context.CancelFunc) {
	t := time.NewTicker(d.Lease.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			held, holder, err := d.Lease.Acquire(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil || !held {
				d.Log.Error("lost the lease; stopping this cycle", "holder", holder, "err", err)
				d.Metrics.leader(false)
				cancel()
				return
			}
		}
	}
}

func writeState(path string, rec Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// drift counts services the plan found changed outside the agent.
func drift(p *plan.Plan) int {
	n := 0
	for _, c := range p.Changes {
		if strings.Contains(c.Detail, "drift") {
			n++
		}
	}
	return n
}
