package reconcile

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/redact"
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
// CI/CD variables that the release's ref may read), as KEY=VALUE.
type Variables interface {
	Variables(ctx context.Context, rel *source.Release) ([]string, error)
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
	// Env is what the platform grants a release to read besides Vars (the configuration's variables), as
	// KEY=VALUE; never the agent's own environment. Vars adds the CI/CD variables. A release referencing any
	// other variable is refused, and its files are confined to its directory.
	Env  []string
	Vars Variables
	// NameKey gives the swarm's key for secret and config names (swarm.NameKey); asked once, then kept.
	NameKey func(ctx context.Context) ([]byte, error)
	// Redact learns every CI/CD variable's value, and cleans every reason before it is recorded or reported.
	// (The caller teaches it the secret values of Env.)
	Redact *redact.Redactor
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
	// CycleTimeout bounds a whole cycle (default 15m); ReportTimeout one report to GitLab (default 30s).
	CycleTimeout, ReportTimeout time.Duration
	// Revision names what the decisions of a cycle depend on besides the release and its variables (the
	// policies' and the trust policy's revisions), for remembering failures. Optional.
	Revision func(ctx context.Context) string
	// RetryFile, when it exists, asks the next cycle to roll out a release that failed before (agent retry
	// writes it; the cycle removes it).
	RetryFile string
	// HistoryDir keeps a copy of every release of the history (agent rollback re-applies it); HistoryKeep is
	// how many releases the history keeps (default DefaultHistoryKeep); RequestFile is where agent rollback
	// and agent unpin leave a request, read at the start of a cycle. All optional.
	HistoryDir, RequestFile string
	HistoryKeep             int
	// Pins keeps the pin in the swarm (SwarmPins), so that it holds whichever agent takes the lease over;
	// nil: the pin is this agent's own (its state file). Optional.
	Pins PinStore
	// Replicas reads a stack's services' tasks now, by Swarm service name (the status page). Optional.
	Replicas func(ctx context.Context, stack string) (map[string]Replicas, error)
	// RecordDeployments also reports every outcome as a deployment of the environment (report.KindDeployment:
	// running when a new release starts, then success or failed), through the same outbox.
	RecordDeployments bool
	// Notifier is told every cycle's record and each stack's outcome (notify.go). Optional.
	Notifier Notifier
	// SOPS decrypts a release's SOPS-encrypted secret files (internal/sopsfile, with the agent's age
	// identity); nil: a release with one is invalid.
	SOPS compose.Decrypter

	trigger  chan struct{}
	outcomes []StackOutcome // this cycle's stacks, for the notifier
	nameKey  []byte
	held     bool // this agent held the lease after the last cycle
	outbox   []report.Outcome
	mu       sync.Mutex
	last     Record
	ready    bool

	// deploymentsChecked: GitLab's deployment records were read since this agent started or took the lease
	// (alreadyShown).
	deploymentsChecked bool

	// The history, the pin, the answer to the last request (all in the state file; dirty: not written yet),
	// this cycle's choices, and what the status page shows.
	history      []HistoryEntry
	pin          *Pin
	pinUnsaved   bool // the pin could not be written to Pins: written again next cycle
	answer       *Answer
	dirty        bool
	turn         turn
	cycles       []Record
	stacks       []StackView
	drift        map[string]driftCount
	replicaCache replicaCache

	// renewedAt is when the last successful renewal of the lease started (UnixNano of Now; 0: never).
	renewedAt atomic.Int64
}

// Record is the status of one cycle: /status, the state file and the report are made from it.
type Record struct {
	Time    time.Time `json:"time"`
	Release string    `json:"release,omitempty"`
	Commit  string    `json:"commit,omitempty"`
	// Ref is the release's branch or tag (Tag: a tag), as GitLab recorded its deployment.
	Ref string `json:"ref,omitempty"`
	Tag bool   `json:"tag,omitempty"`
	// Outcome: success, failed, refused, invalid, standby, or error (the source or the engine could not be
	// reached; nothing changed).
	Outcome outcome.Outcome `json:"outcome"`
	Reason  string          `json:"reason,omitempty"`
	// Fingerprint identifies what was rolled out: the release, its variables and the policies' revision.
	Fingerprint string `json:"fingerprint,omitempty"`
	// Held: the release failed before with the same fingerprint and was not rolled out again; it will be
	// when the release, its variables or the policies change, or on `agent retry`.
	Held bool `json:"held,omitempty"`
	// ReportsPending counts the reports to GitLab not delivered yet (retried every cycle, in order).
	ReportsPending int `json:"reports_pending,omitempty"`
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
	if l.Redact == nil {
		l.Redact = redact.New()
	}
	if l.CycleTimeout <= 0 {
		l.CycleTimeout = 15 * time.Minute
	}
	if l.ReportTimeout <= 0 {
		l.ReportTimeout = 30 * time.Second
	}
	l.trigger = make(chan struct{}, 1)
	if l.StateFile != "" {
		st, err := readState(l.StateFile, l.Now())
		if err != nil {
			l.Log.Error("state file", "err", err)
		}
		l.last, l.outbox = st.Record, st.Outbox
		l.history, l.pin, l.answer = st.History, st.Pin, st.Answer
	}
	l.drift = map[string]driftCount{}
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

// Run cycles until ctx ends. After an error (the source, a registry or the engine unreachable) it waits with
// exponential backoff, jittered, never longer than the interval. Between cycles it keeps renewing the lease
// it holds, so one agent stays the actor. It releases the lease when it stops.
func (l *Loop) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	requests, stopRequests := l.requestTicks()
	defer stopRequests()
	// One ticker for the whole loop (one per cycle, stopped only when Run returned, piled up: a timer and a
	// deferred call per cycle).
	var renew <-chan time.Time
	if l.Lease != nil {
		t := time.NewTicker(l.Lease.RenewEvery())
		defer t.Stop()
		renew = t.C
	}
	for {
		rec := l.Cycle(ctx)
		wait := l.Interval
		if rec.Outcome == outcome.Error {
			backoff = min(max(2*backoff, time.Second), l.Interval)
			wait = backoff
		} else {
			backoff = 0
		}
		timer := time.NewTimer(l.jittered(wait))
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				l.ReleaseLease()
				return nil
			case <-l.trigger:
				l.Log.Info("sync triggered")
				break wait
			case <-timer.C:
				break wait
			case <-renew:
				l.renew(ctx)
				if l.sharedRequestPending() {
					l.Log.Info("request received through the swarm (agent rollback)")
					break wait
				}
			case <-requests:
				if l.RequestFile != "" {
					if _, err := os.Stat(l.RequestFile); err == nil {
						l.Log.Info("request received (agent rollback or unpin)")
						break wait
					}
				}
			}
		}
		timer.Stop()
	}
}

// renew renews the lease between cycles, if this agent holds it.
func (l *Loop) renew(ctx context.Context) {
	if !l.held {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, l.Lease.RenewEvery())
	defer cancel()
	start := l.Now()
	held, holder, err := l.Lease.Acquire(rctx)
	if err != nil {
		l.Log.Warn("renewing the lease", "err", err)
		return // the next cycle tries again, and stands by if it cannot
	}
	if held {
		l.renewedAt.Store(start.UnixNano())
	}
	if !held {
		l.Log.Warn("lost the lease", "holder", holder)
		l.held = false
		l.Metrics.Leader(false)
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

func (l *Loop) jittered(d time.Duration) time.Duration {
	if l.Jitter <= 0 {
		return d
	}
	f := 1 + l.Jitter*(2*l.Rand()-1)
	return time.Duration(float64(d) * f)
}

// Cycle runs once, in order: deliver queued reports, then (within CycleTimeout) lease, release, variables,
// every stack through the flow; then record the outcome, queue a report when it changed, write the state file,
// and deliver the queue.
func (l *Loop) Cycle(ctx context.Context) Record {
	start := l.Now()
	l.flush(ctx)
	cctx, cancel := context.WithTimeout(ctx, l.CycleTimeout)
	rec := l.safeCycle(cctx)
	if ctx.Err() != nil && rec.Outcome != outcome.Success && rec.Outcome != outcome.Standby {
		// The agent is stopping (Swarm stops the old agent once its start-first successor is healthy): an
		// interrupted cycle says nothing about the release; it is neither recorded nor reported, and the
		// agent that takes the lease over runs it again.
		rec.Outcome, rec.Held = outcome.Error, false
		rec.Reason = "interrupted, the agent is stopping: " + rec.Reason
	}
	if errors.Is(cctx.Err(), context.DeadlineExceeded) && rec.Outcome != outcome.Success {
		rec.Reason = fmt.Sprintf("the cycle did not finish within %s: %s", l.CycleTimeout, rec.Reason)
	}
	cancel()
	rec.Reason = l.Redact.String(rec.Reason)
	rec.Time = l.Now().UTC()
	elapsed := l.Now().Sub(start)
	prev := l.Last()

	changed := rec.Release != prev.Release || rec.Outcome != prev.Outcome || rec.Reason != prev.Reason
	if state := rec.Outcome.Row().CommitState; changed && state != "" && rec.Commit != "" {
		reason := "deployed"
		if rec.Outcome != outcome.Success {
			reason = string(rec.Outcome) + ": " + rec.Reason
		}
		l.outbox = append(l.outbox, report.Outcome{Environment: l.Environment, Commit: rec.Commit, State: report.State(state), Reason: reason})
		l.queueDeployment(rec, report.State(state), reason)
	}
	keep := rec.Outcome != outcome.Error && rec.Outcome != outcome.Standby
	l.afterCycle(rec, keep)
	if keep && (changed || rec.Fingerprint != prev.Fingerprint) {
		l.save(rec)
	} else if len(l.outbox) > 0 {
		l.save(prev)
	}
	if l.dirty {
		if keep {
			l.save(rec)
		} else {
			st, _ := readState(l.StateFile, l.Now())
			l.save(st.Record)
		}
	}
	if !keep {
		// An outage or a standby says nothing about what runs: the last real outcome stays on record for
		// the state file, while /status shows this cycle.
		rec.Fingerprint = prev.Fingerprint
	}
	l.flush(ctx)
	rec.ReportsPending = len(l.outbox)
	l.mu.Lock()
	l.last = rec
	l.ready = l.ready || rec.Outcome != outcome.Error
	l.mu.Unlock()
	// Counted once /status shows the cycle: whoever sees the count move reads this cycle there, not the one
	// before (the fault suite did, while this cycle's reports were being delivered).
	l.Metrics.Cycle(rec, elapsed)
	if l.Notifier != nil {
		l.Notifier.Notify(rec, l.outcomes)
	}

	level := slog.LevelInfo
	if rec.Outcome != outcome.Success && rec.Outcome != outcome.Standby {
		level = slog.LevelError
	}
	l.Log.Log(ctx, level, "cycle", "outcome", string(rec.Outcome), "release", rec.Release, "commit", rec.Commit, "reason", rec.Reason, "held", rec.Held, "duration", elapsed.Round(100*time.Microsecond))
	return rec
}

// queueDeployment queues rec as a deployment record of the environment in state, when RecordDeployments is
// set and the release has a ref; it reports whether it did.
func (l *Loop) queueDeployment(rec Record, state report.State, reason string) bool {
	if !l.RecordDeployments || rec.Ref == "" || rec.Commit == "" {
		return false
	}
	l.outbox = append(l.outbox, report.Outcome{Kind: report.KindDeployment, Environment: l.Environment, Commit: rec.Commit,
		Ref: rec.Ref, Tag: rec.Tag, State: state, Reason: reason})
	return true
}

// save writes the state file: rec and the queued reports.
func (l *Loop) save(rec Record) {
	if l.StateFile == "" {
		return
	}
	rec.ReportsPending = 0
	l.dirty = false
	if err := writeState(l.StateFile, state{Record: rec, Outbox: l.outbox, History: l.history, Pin: l.pin, Answer: l.answer}); err != nil {
		l.Log.Error("state file", "err", err)
	}
}

// flush delivers the queued reports in order, each within ReportTimeout, and stops at the first that fails
// (it is retried next cycle). Delivered ones leave the queue and the state file.
func (l *Loop) flush(ctx context.Context) {
	if l.Reporter == nil {
		l.outbox = nil
		return
	}
	sent := 0
	for _, o := range l.outbox {
		rctx, cancel := context.WithTimeout(ctx, l.ReportTimeout)
		err := l.Reporter.Report(rctx, o)
		cancel()
		if err != nil {
			l.Log.Error("report to GitLab failed; retried next cycle", "commit", o.Commit, "state", string(o.State), "err", l.Redact.String(err.Error()))
			break
		}
		sent++
	}
	if sent == 0 {
		return
	}
	l.outbox = l.outbox[sent:]
	last := l.Last()
	if last.Outcome == "" || last.Outcome == outcome.Error || last.Outcome == outcome.Standby {
		st, _ := readState(l.StateFile, l.Now())
		last = st.Record
	}
	l.save(last)
}

// safeCycle runs a cycle; a panic (a bug; never input: the input is checked) is an error outcome, so that
// the loop, and the standbys, stay up.
func (l *Loop) safeCycle(ctx context.Context) (rec Record) {
	defer func() {
		if p := recover(); p != nil {
			l.Log.Error("cycle panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			rec = Record{Outcome: outcome.Error, Reason: fmt.Sprintf("internal error: %v", p)}
		}
	}()
	return l.cycle(ctx)
}

func (l *Loop) cycle(ctx context.Context) Record {
	l.outcomes = nil
	if l.Lease != nil {
		// A holder that renewed less than RenewEvery ago holds the lease for two thirds of the TTL at least:
		// the cycle goes on without a renewal of its own (two API calls, one a Raft write), and keepLease
		// renews it on the schedule of the last renewal.
		if !l.leaseFresh() {
			actx, acancel := context.WithTimeout(ctx, l.Lease.RenewEvery())
			start := l.Now()
			held, holder, err := l.Lease.Acquire(actx)
			acancel()
			if err != nil {
				// This agent cannot tell whether it still holds the lease: it does not act, and does not say it
				// leads (a standby that can reach the swarm may be acting by now).
				l.held = false
				l.Metrics.Leader(false)
				return Record{Outcome: outcome.Error, Reason: err.Error()}
			}
			l.Metrics.Leader(held)
			if held && !l.held {
				l.deploymentsChecked = false // taken over: another agent may have recorded this release
			}
			l.held = held
			if !held {
				return Record{Outcome: outcome.Standby, Reason: "agent " + holder + " holds the lease"}
			}
			l.renewedAt.Store(start.UnixNano())
		}
		// A rollout can outlast the lease: renew it while the cycle runs, and stop the cycle if it is lost.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go l.keepLease(ctx, cancel, time.Unix(0, l.renewedAt.Load()))
	}
	rel, key, err := l.Source.Latest(ctx)
	if err != nil {
		if errors.Is(err, source.ErrNoDeployment) {
			return Record{Outcome: outcome.Standby, Reason: err.Error()}
		}
		if o := outcome.Of(err); o == outcome.Invalid {
			rec := Record{Outcome: o, Release: key, Reason: err.Error()}
			if re := (*source.ReleaseError)(nil); errors.As(err, &re) {
				rec.Commit, rec.Ref, rec.Tag = re.Commit, re.Ref, re.Tag
			}
			return rec
		}
		return Record{Outcome: outcome.Error, Reason: "source: " + err.Error()}
	}
	if err := l.loadPin(ctx); err != nil {
		return Record{Outcome: outcome.Error, Reason: err.Error()}
	}
	if rel, key, err = l.choose(ctx, rel, key); err != nil {
		return Record{Outcome: outcome.Of(err), Release: key, Reason: err.Error()}
	}
	rec := Record{Release: key, Commit: rel.Manifest.Commit, Ref: rel.Ref, Tag: rel.Tag}
	if rec.Ref == "" {
		rec.Ref = rel.Manifest.Ref
	}
	env := l.Env
	if l.Vars != nil {
		vars, err := l.Vars.Variables(ctx, rel)
		if err != nil {
			return Record{Outcome: outcome.Error, Release: key, Commit: rec.Commit, Reason: "variables: " + err.Error()}
		}
		for _, kv := range vars {
			_, v, _ := strings.Cut(kv, "=")
			l.Redact.Add(v)
		}
		env = append(append([]string(nil), env...), vars...)
	}
	if l.nameKey == nil && l.NameKey != nil {
		k, err := l.NameKey(ctx)
		if err != nil {
			return Record{Outcome: outcome.Error, Release: key, Commit: rec.Commit, Reason: err.Error()}
		}
		l.nameKey = k
	}
	rec.Fingerprint = l.fingerprint(ctx, key, env)
	if last := l.Last(); last.Outcome == outcome.Failed && last.Fingerprint == rec.Fingerprint && !l.retryRequested() {
		// The same release failed with the same inputs: rolling it out again would fail again, with downtime.
		rec.Outcome, rec.Reason, rec.Held = outcome.Failed, last.Reason, true
		return rec
	}
	if rec.Release != l.Last().Release && !l.alreadyShown(ctx, rec) && l.queueDeployment(rec, report.Running, "rolling out") {
		l.flush(ctx) // the environment shows the rollout while it runs
	}
	stacks := l.Stacks
	if len(stacks) == 0 {
		stacks = rel.Manifest.StackNames()
	}
	var failures []string
	rec.Outcome = outcome.Success
	for _, name := range stacks {
		files, err := rel.Files(name, l.Environment)
		var c *Cycle
		if err == nil {
			c = l.Flow.Run(ctx, compose.Options{Files: files, Stack: name, Env: env, WorkDir: filepath.Dir(files[0]), Root: rel.Dir, Strict: true, NameKey: l.nameKey, Environment: l.Environment, SOPS: l.SOPS})
			if c.Result != nil && c.Result.Plan != nil {
				l.Metrics.Applied(c.Result.Plan)
			}
			l.seen(c, key)
			if l.Show != nil {
				l.Show(c)
			}
			err = c.Err
		}
		l.outcomes = append(l.outcomes, stackOutcome(name, c, err))
		if err != nil {
			o := outcome.Of(err)
			if o.Worse(rec.Outcome) {
				rec.Outcome = o
			}
			failures = append(failures, name+": "+err.Error())
			l.Metrics.Rejected(o)
		}
	}
	l.turn.ran = true
	rec.Reason = strings.Join(failures, "; ")
	return rec
}

// leaseFresh reports whether this agent holds the lease from a renewal that started less than RenewEvery ago.
func (l *Loop) leaseFresh() bool {
	at := l.renewedAt.Load()
	return l.held && at != 0 && l.Now().Sub(time.Unix(0, at)) < l.Lease.RenewEvery()
}

// keepLease renews the lease while a cycle runs. The holder keeps a local deadline: two thirds of the TTL
// after the start of its last successful renewal (the rest is the margin for the agents' clocks); when it
// cannot renew before then (the engine hangs, the network is cut), or another agent holds the lease, it
// cancels the cycle, so that two agents never act at once.
func (l *Loop) keepLease(ctx context.Context, cancel context.CancelFunc, lastOK time.Time) {
	every := l.Lease.RenewEvery()
	// The first renewal is due every after the last one (lastOK, at most every ago), then every every.
	t := time.NewTimer(min(max(every-l.Now().Sub(lastOK), 0), every))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			t.Reset(every)
			start := l.Now()
			rctx, rcancel := context.WithTimeout(ctx, every)
			held, holder, err := l.Lease.Acquire(rctx)
			rcancel()
			if ctx.Err() != nil {
				return
			}
			switch {
			case err == nil && held:
				lastOK = start
				l.renewedAt.Store(start.UnixNano())
				continue
			case err == nil:
				l.Log.Error("lost the lease; stopping this cycle", "holder", holder)
			case l.Now().Before(lastOK.Add(2 * every)):
				l.Log.Warn("renewing the lease failed; retrying before the local deadline", "err", err)
				continue
			default:
				l.Log.Error("could not renew the lease before its local deadline; stopping this cycle", "err", err)
			}
			l.held = false
			l.Metrics.Leader(false)
			cancel()
			return
		}
	}
}

// fingerprint identifies a rollout's inputs: the release, the values it is interpolated with, and the
// revisions of the policies and the trust policy. The values are hashed with the swarm's name key.
func (l *Loop) fingerprint(ctx context.Context, key string, env []string) string {
	h := hmac.New(sha256.New, l.nameKey)
	h.Write([]byte(key + "\x00"))
	for _, kv := range env {
		h.Write([]byte(kv + "\x00"))
	}
	if l.Revision != nil {
		h.Write([]byte(l.Revision(ctx)))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// retryRequested reports (once) whether an operator asked to roll a failed release out again.
func (l *Loop) retryRequested() bool {
	if l.RetryFile == "" {
		return false
	}
	if err := os.Remove(l.RetryFile); err != nil {
		return false
	}
	l.Log.Info("retry requested: rolling out a release that failed before")
	return true
}

type nopRecorder struct{}

func (nopRecorder) Cycle(Record, time.Duration) {}
func (nopRecorder) Applied(*plan.Plan)          {}
func (nopRecorder) Rejected(outcome.Outcome)    {}
func (nopRecorder) Leader(bool)                 {}
