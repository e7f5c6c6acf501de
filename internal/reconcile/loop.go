package reconcile

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
)

// Source gives the newest release (source.Follow, source.Local, source.Git). Key identifies a release, so a
// new one can be told from the one applied.
type Source interface {
	Latest(ctx context.Context) (rel *source.Release, key string, err error)
}

// Leaser elects the one agent that acts on a swarm (*swarm.Lease).
type Leaser interface {
	Acquire(ctx context.Context) (held bool, holder string, err error)
	Release(ctx context.Context) error
	// RenewEvery is how often the holder renews while a cycle runs.
	RenewEvery() time.Duration
}

// Reporter sends an outcome back (GitLab's commit status API, *report.GitLab).
type Reporter interface {
	Report(ctx context.Context, o report.Outcome) error
}

// Variables gives the values a release's compose files are interpolated with (the environment's GitLab
// CI/CD variables), as KEY=VALUE.
type Variables interface {
	Variables(ctx context.Context) ([]string, error)
}

// Recorder counts what the loop does (the Prometheus metrics of internal/status).
type Recorder interface {
	// Cycle is called once per cycle with its record and duration.
	Cycle(rec Record, d time.Duration)
	// Applied is called with every plan applied.
	Applied(p *plan.Plan)
	// Rejected is called for every stack that was not rolled out, with its outcome.
	Rejected(o outcome.Outcome)
	// Leader is called with whether this agent holds the lease.
	Leader(held bool)
}

// Loop is the agent's long-running mode: every Interval (or at once when triggered) the agent holding the
// lease fetches the release, runs every stack of it through Flow, records the outcome and reports it.
// Fill the fields and call Init.
type Loop struct {
	Environment string
	Source      Source
	// Stacks limits the stacks applied; empty means every stack of the release.
	Stacks []string
	// Flow runs one stack; its Apply must be set.
	Flow *Flow
	// Env is the environment compose files are interpolated with, as KEY=VALUE; Vars adds to it.
	Env  []string
	Vars Variables
	// Lease elects the one agent that acts; nil means this agent always acts.
	Lease    Leaser
	Reporter Reporter
	// StateFile keeps the last outcome across restarts. Optional.
	StateFile string
	Interval  time.Duration
	// Jitter spreads polls: each wait is Interval * (1 ± Jitter).
	Jitter  float64
	Log     *slog.Logger
	Metrics Recorder
	// Show is called with every stack's cycle once it ran (cmd/agent prints or logs it). Optional.
	Show func(c *Cycle)
	// Now is the clock; Rand returns a number in [0, 1) for the jitter. Defaults: time.Now, math/rand/v2.
	Now  func() time.Time
	Rand func() float64

	trigger chan struct{}
	mu      sync.Mutex
	last    Record
	ready   bool
}

// Record is the status of one cycle: /status, the state file and the report are made from it.
type Record struct {
	Time    time.Time `json:"time"`
	Release string    `json:"release,omitempty"`
	Commit  string    `json:"commit,omitempty"`
	// Outcome: success, failed, refused, invalid, standby, or error (the source or the engine could not be
	// reached; nothing changed).
	Outcome outcome.Outcome `json:"outcome"`
	Reason  string          `json:"reason,omitempty"`
}

// Init checks l, fills its defaults and reads the state file.
func (l *Loop) Init() error {
	if l.Source == nil || l.Flow == nil || l.Flow.Apply == nil || l.Environment == "" {
		return errors.New("reconcile loop: a source, a flow that applies and an environment are needed")
	}
	if l.Interval <= 0 {
		l.Interval = time.Minute
	}
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	if l.Metrics == nil {
		l.Metrics = nopRecorder{}
	}
	if l.Now == nil {
		l.Now = time.Now
	}
	if l.Rand == nil {
		l.Rand = randFloat
	}
	l.trigger = make(chan struct{}, 1)
	if l.StateFile != "" {
		rec, err := readState(l.StateFile)
		if err != nil {
			l.Log.Error("state file", "err", err)
		}
		l.last = rec
	}
	return nil
}

// Trigger asks for a cycle now (the webhook calls it); it never blocks.
func (l *Loop) Trigger() {
	select {
	case l.trigger <- struct{}{}:
	default:
	}
}

// Last returns the last cycle's record.
func (l *Loop) Last() Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Ready reports whether a cycle finished since the start (applied, refused or standing by).
func (l *Loop) Ready() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ready
}

// Run cycles until ctx ends. After an error (the source or the engine unreachable) it waits with
// exponential backoff, never longer than the interval. It releases the lease when it stops.
func (l *Loop) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	for {
		rec := l.Cycle(ctx)
		wait := l.jittered()
		if rec.Outcome == outcome.Error {
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
			l.ReleaseLease()
			return nil
		case <-l.trigger:
			l.Log.Info("sync triggered")
		case <-time.After(wait):
		}
	}
}

// ReleaseLease gives the lease up (when the agent stops), so a standby takes over at once.
func (l *Loop) ReleaseLease() {
	if l.Lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.Lease.Release(ctx)
}

func (l *Loop) jittered() time.Duration {
	if l.Jitter <= 0 {
		return l.Interval
	}
	f := 1 + l.Jitter*(2*l.Rand()-1)
	return time.Duration(float64(l.Interval) * f)
}

// Cycle runs once, in order: lease, release, variables, every stack through the flow, then record the
// outcome, report it when it changed, and write the state file.
func (l *Loop) Cycle(ctx context.Context) Record {
	start := l.Now()
	rec := l.cycle(ctx)
	rec.Time = l.Now().UTC()
	elapsed := l.Now().Sub(start)
	l.Metrics.Cycle(rec, elapsed)
	l.mu.Lock()
	prev := l.last
	l.last = rec
	l.ready = l.ready || rec.Outcome != outcome.Error
	l.mu.Unlock()

	changed := rec.Release != prev.Release || rec.Outcome != prev.Outcome || rec.Reason != prev.Reason
	if state := rec.Outcome.Row().CommitState; changed && state != "" && rec.Commit != "" && l.Reporter != nil {
		reason := "deployed"
		if rec.Outcome != outcome.Success {
			reason = string(rec.Outcome) + ": " + rec.Reason
		}
		if err := l.Reporter.Report(ctx, report.Outcome{Environment: l.Environment, Commit: rec.Commit, State: report.State(state), Reason: reason}); err != nil {
			l.Log.Error("report to GitLab failed", "err", err)
		}
	}
	if changed && l.StateFile != "" && rec.Outcome != outcome.Error {
		if err := writeState(l.StateFile, rec); err != nil {
			l.Log.Error("state file", "err", err)
		}
	}
	level := slog.LevelInfo
	if rec.Outcome != outcome.Success && rec.Outcome != outcome.Standby {
		level = slog.LevelError
	}
	l.Log.Log(ctx, level, "cycle", "outcome", string(rec.Outcome), "release", rec.Release, "commit", rec.Commit, "reason", rec.Reason, "duration", elapsed.Round(time.Millisecond))
	return rec
}

func (l *Loop) cycle(ctx context.Context) Record {
	if l.Lease != nil {
		held, holder, err := l.Lease.Acquire(ctx)
		if err != nil {
			return Record{Outcome: outcome.Error, Reason: err.Error()}
		}
		l.Metrics.Leader(held)
		if !held {
			return Record{Outcome: outcome.Standby, Reason: "agent " + holder + " holds the lease"}
		}
		// A rollout can outlast the lease: renew it while the cycle runs, and stop the cycle if it is lost.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go l.keepLease(ctx, cancel)
	}
	rel, key, err := l.Source.Latest(ctx)
	if err != nil {
		if errors.Is(err, source.ErrNoDeployment) {
			return Record{Outcome: outcome.Standby, Reason: err.Error()}
		}
		if o := outcome.Of(err); o == outcome.Invalid {
			return Record{Outcome: o, Release: key, Reason: err.Error()}
		}
		return Record{Outcome: outcome.Error, Reason: "source: " + err.Error()}
	}
	rec := Record{Release: key, Commit: rel.Manifest.Commit}
	env := l.Env
	if l.Vars != nil {
		vars, err := l.Vars.Variables(ctx)
		if err != nil {
			return Record{Outcome: outcome.Error, Release: key, Commit: rec.Commit, Reason: "variables: " + err.Error()}
		}
		env = append(append([]string(nil), env...), vars...)
	}
	stacks := l.Stacks
	if len(stacks) == 0 {
		stacks = rel.Manifest.StackNames()
	}
	var failures []string
	rec.Outcome = outcome.Success
	for _, name := range stacks {
		files, err := rel.Files(name, l.Environment)
		if err == nil {
			c := l.Flow.Run(ctx, compose.Options{Files: files, Stack: name, Env: env, WorkDir: filepath.Dir(files[0])})
			if c.Result != nil && c.Result.Plan != nil {
				l.Metrics.Applied(c.Result.Plan)
			}
			if l.Show != nil {
				l.Show(c)
			}
			err = c.Err
		}
		if err != nil {
			o := outcome.Of(err)
			if o.Worse(rec.Outcome) {
				rec.Outcome = o
			}
			failures = append(failures, name+": "+err.Error())
			l.Metrics.Rejected(o)
		}
	}
	rec.Reason = strings.Join(failures, "; ")
	return rec
}

// keepLease renews the lease until ctx ends; when a renewal fails it cancels the cycle, so that two agents
// never act at once.
func (l *Loop) keepLease(ctx context.Context, cancel context.CancelFunc) {
	t := time.NewTicker(l.Lease.RenewEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			held, holder, err := l.Lease.Acquire(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil || !held {
				l.Log.Error("lost the lease; stopping this cycle", "holder", holder, "err", err)
				l.Metrics.Leader(false)
				cancel()
				return
			}
		}
	}
}

type nopRecorder struct{}

func (nopRecorder) Cycle(Record, time.Duration) {}
func (nopRecorder) Applied(*plan.Plan)          {}
func (nopRecorder) Rejected(outcome.Outcome)    {}
func (nopRecorder) Leader(bool)                 {}
