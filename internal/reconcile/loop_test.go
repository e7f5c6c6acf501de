package reconcile

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
	sw "github.com/sabeiro/sawmill/internal/swarm"
)

type fakeSource struct {
	mu     sync.Mutex
	times  []time.Time
	commit string
	err    error
}

func (s *fakeSource) Latest(context.Context) (*source.Release, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.times = append(s.times, time.Now())
	if s.err != nil {
		return nil, "", s.err
	}
	m := manifest.Release{Commit: s.commit, Stacks: map[string]manifest.Stack{"shop": {Files: []string{"stacks/shop/compose.yaml"}}}}
	return &source.Release{Manifest: m, Dir: "/release"}, "commit-" + s.commit, nil
}

func (s *fakeSource) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.times)
}

type fakeReporter struct{ sent []report.Outcome }

func (r *fakeReporter) Report(_ context.Context, o report.Outcome) error {
	r.sent = append(r.sent, o)
	return nil
}

type fakeLease struct {
	held   bool
	lostAt int // the Acquire call (1-based) from which the lease is lost; 0: never
	n      int
}

func (l *fakeLease) Acquire(context.Context) (bool, string, error) {
	l.n++
	if l.lostAt > 0 && l.n >= l.lostAt {
		return false, "other-agent", nil
	}
	return l.held, "other-agent", nil
}
func (l *fakeLease) Release(context.Context) error { return nil }
func (l *fakeLease) RenewEvery() time.Duration     { return time.Second }

type recorder struct {
	nopRecorder
	rejected []outcome.Outcome
	leader   bool
}

func (r *recorder) Rejected(o outcome.Outcome) { r.rejected = append(r.rejected, o) }
func (r *recorder) Leader(held bool)           { r.leader = held }

func newLoop(t *testing.T, fx *fixture, src *fakeSource, rep *fakeReporter, state string) *Loop {
	t.Helper()
	l := &Loop{Environment: "staging", Source: src, Flow: fx.flow, Reporter: rep, StateFile: state, Interval: time.Minute, Metrics: &recorder{}}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLoopReportsOnceAndSurvivesRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.json")
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	src := &fakeSource{commit: "abc"}
	rep := &fakeReporter{}
	l := newLoop(t, fx, src, rep, state)

	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success || rec.Commit != "abc" {
		t.Fatalf("first cycle: %+v", rec)
	}
	l.Cycle(context.Background())
	if len(rep.sent) != 1 || rep.sent[0].State != report.Success || rep.sent[0].Commit != "abc" || rep.sent[0].Environment != "staging" {
		t.Fatalf("reports %+v, want one success for abc", rep.sent)
	}
	if !l.Ready() || l.Last().Outcome != outcome.Success {
		t.Fatalf("ready %v, last %+v", l.Ready(), l.Last())
	}

	// A restart reads the state file: the same outcome is not reported again.
	l2 := newLoop(t, fx, src, rep, state)
	if l2.Last().Outcome != outcome.Success || l2.Last().Release != "commit-abc" {
		t.Fatalf("state after restart: %+v", l2.Last())
	}
	l2.Cycle(context.Background())
	if len(rep.sent) != 1 {
		t.Fatalf("reported again after a restart: %+v", rep.sent)
	}
}

func TestLoopRefusedIsReportedFailed(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	fx.eval.deny = true
	rep := &fakeReporter{}
	l := newLoop(t, fx, &fakeSource{commit: "bad"}, rep, "")
	rec := l.Cycle(context.Background())
	if rec.Outcome != outcome.Refused || fx.writes != 0 {
		t.Fatalf("record %+v, writes %d", rec, fx.writes)
	}
	if len(rep.sent) != 1 || rep.sent[0].State != report.Failed {
		t.Fatalf("reports %+v, want one failed", rep.sent)
	}
	if got := l.Metrics.(*recorder).rejected; len(got) != 1 || got[0] != outcome.Refused {
		t.Fatalf("rejections %v", got)
	}
}

func TestLoopStandbyDoesNothing(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	src := &fakeSource{commit: "abc"}
	rep := &fakeReporter{}
	l := newLoop(t, fx, src, rep, "")
	l.Lease = &fakeLease{held: false}
	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Standby {
		t.Fatalf("record %+v, want standby", rec)
	}
	if src.calls() != 0 || len(fx.calls) != 0 || len(rep.sent) != 0 {
		t.Fatalf("a standby agent acted: source %d, steps %v, reports %v", src.calls(), fx.calls, rep.sent)
	}
}

func TestLoopBacksOffOnErrorsAndKeepsTheInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		src := &fakeSource{err: errors.New("gitlab: 502 Bad Gateway")}
		rep := &fakeReporter{}
		l := newLoop(t, fx, src, rep, "")
		l.Interval, l.Jitter = 10*time.Second, 0.5
		l.Rand = func() float64 { return 0 } // the shortest wait: Interval * (1 - Jitter)

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		start := time.Now()
		go func() { _ = l.Run(ctx); close(done) }()
		time.Sleep(20 * time.Second)
		synctest.Wait()

		// Errors: a backoff of 1s, 2s, 4s, 8s, then capped at the interval (10s), each jittered (x0.5 here).
		ms := time.Millisecond
		want := []time.Duration{0, 500 * ms, 1500 * ms, 3500 * ms, 7500 * ms, 12500 * ms, 17500 * ms}
		src.mu.Lock()
		got := make([]time.Duration, len(src.times))
		for i, at := range src.times {
			got[i] = at.Sub(start)
		}
		src.mu.Unlock()
		if len(got) != len(want) {
			t.Fatalf("cycles at %v, want %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("cycles at %v, want %v", got, want)
			}
		}
		if l.Last().Outcome != outcome.Error || len(rep.sent) != 0 || l.Ready() {
			t.Fatalf("an outage: last %+v, reports %v, ready %v", l.Last(), rep.sent, l.Ready())
		}

		// The outage ends: a trigger runs a cycle at once.
		src.mu.Lock()
		src.err, src.commit = nil, "abc"
		src.mu.Unlock()
		n := src.calls()
		l.Trigger()
		synctest.Wait()
		if src.calls() != n+1 || l.Last().Outcome != outcome.Success {
			t.Fatalf("after the trigger: %d cycles, last %+v", src.calls()-n, l.Last())
		}
		cancel()
		<-done
	})
}

func TestLoopStopsACycleWhenTheLeaseIsLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		blocked := &blockingApplier{}
		fx.flow.Apply = blocked
		l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
		l.Lease = &fakeLease{held: true, lostAt: 3}
		rec := l.Cycle(context.Background())
		if rec.Outcome != outcome.Error || !errors.Is(blocked.err, context.Canceled) {
			t.Fatalf("record %+v, apply ended with %v: want the cycle cancelled when the lease is lost", rec, blocked.err)
		}
	})
}

// blockingApplier waits until its context ends.
type blockingApplier struct {
	err error
}

func (b *blockingApplier) Apply(ctx context.Context, p *plan.Plan) (*sw.Result, error) {
	<-ctx.Done()
	b.err = ctx.Err()
	return &sw.Result{Plan: p}, ctx.Err()
}

// failingApplier fails every rollout, as a release whose new version never becomes healthy.
type failingApplier struct{ calls *int }

func (f failingApplier) Apply(_ context.Context, p *plan.Plan) (*sw.Result, error) {
	*f.calls++
	return &sw.Result{Plan: p}, fault.RolloutErr(errors.New("rollout failed: shop_web: 3 task(s) of the new version failed"))
}

// A release that failed is not rolled out again every cycle: not until it, its variables or the policies
// change, or an operator asks (agent retry). Its status stays failed.
func TestLoopRemembersFailures(t *testing.T) {
	dir := t.TempDir()
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	applies := 0
	fx.flow.Apply = failingApplier{calls: &applies}
	src := &fakeSource{commit: "bad"}
	rep := &fakeReporter{}
	rev := "policies-1"
	l := newLoop(t, fx, src, rep, filepath.Join(dir, "state.json"))
	l.RetryFile = filepath.Join(dir, "retry")
	l.Revision = func(context.Context) string { return rev }

	for i := range 3 {
		rec := l.Cycle(context.Background())
		if rec.Outcome != outcome.Failed || rec.Held != (i > 0) {
			t.Fatalf("cycle %d: %+v", i, rec)
		}
	}
	if applies != 1 || len(rep.sent) != 1 || rep.sent[0].State != report.Failed {
		t.Fatalf("a failed release was rolled out %d times, reported %+v", applies, rep.sent)
	}
	// A restart remembers it too.
	l = newLoop(t, fx, src, rep, filepath.Join(dir, "state.json"))
	l.RetryFile, l.Revision = filepath.Join(dir, "retry"), func(context.Context) string { return rev }
	if rec := l.Cycle(context.Background()); !rec.Held || applies != 1 {
		t.Fatalf("after a restart: %+v, %d rollouts", rec, applies)
	}
	// agent retry: one more rollout.
	if err := os.WriteFile(l.RetryFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if rec := l.Cycle(context.Background()); rec.Held || applies != 2 {
		t.Fatalf("retry: %+v, %d rollouts", rec, applies)
	}
	// A change of the policies: another rollout.
	rev = "policies-2"
	if rec := l.Cycle(context.Background()); rec.Held || applies != 3 {
		t.Fatalf("new policies: %+v, %d rollouts", rec, applies)
	}
	// A new release: rolled out.
	src.mu.Lock()
	src.commit = "next"
	src.mu.Unlock()
	if rec := l.Cycle(context.Background()); rec.Held || applies != 4 {
		t.Fatalf("new release: %+v, %d rollouts", rec, applies)
	}
}

// flakyReporter fails while down is set.
type flakyReporter struct {
	down bool
	sent []report.Outcome
}

func (r *flakyReporter) Report(_ context.Context, o report.Outcome) error {
	if r.down {
		return errors.New("gitlab: 502 Bad Gateway")
	}
	r.sent = append(r.sent, o)
	return nil
}

// Reports GitLab could not take are queued in the state file and delivered later, in order, once each.
func TestLoopOutbox(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.json")
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	src := &fakeSource{commit: "one"}
	rep := &flakyReporter{down: true}
	l := newLoop(t, fx, src, nil, state)
	l.Reporter = rep
	l.Cycle(context.Background())
	fx.eval.deny = true
	src.mu.Lock()
	src.commit = "two"
	src.mu.Unlock()
	if rec := l.Cycle(context.Background()); rec.ReportsPending != 2 {
		t.Fatalf("pending reports: %+v", rec)
	}
	// The agent restarts while GitLab is down: the queue survives.
	l = newLoop(t, fx, src, nil, state)
	l.Reporter = rep
	rep.down = false
	rec := l.Cycle(context.Background())
	if rec.ReportsPending != 0 || len(rep.sent) != 2 || rep.sent[0].Commit != "one" || rep.sent[0].State != report.Success ||
		rep.sent[1].Commit != "two" || rep.sent[1].State != report.Failed {
		t.Fatalf("delivered %+v, pending %d", rep.sent, rec.ReportsPending)
	}
	l.Cycle(context.Background())
	if len(rep.sent) != 2 {
		t.Fatalf("a report was delivered twice: %+v", rep.sent)
	}
}

// A corrupt state file is moved aside and reported; the agent starts as new.
func TestLoopCorruptState(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	if err := os.WriteFile(state, []byte(`{"outcome": "succ`), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	l := &Loop{Environment: "staging", Source: &fakeSource{commit: "abc"}, Flow: fx.flow, StateFile: state, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "is corrupt") || l.Last().Outcome != "" {
		t.Fatalf("log %q, last %+v", logs.String(), l.Last())
	}
	aside, _ := filepath.Glob(state + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("the corrupt file was not kept aside: %v", aside)
	}
	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success {
		t.Fatalf("after a corrupt state: %+v", rec)
	}
	b, err := os.ReadFile(state)
	if err != nil || !strings.Contains(string(b), `"outcome": "success"`) {
		t.Fatalf("state file %s %v", b, err)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
}

// hangingLease answers the first Acquire, then hangs until the caller gives up.
type hangingLease struct{ n int }

func (l *hangingLease) Acquire(ctx context.Context) (bool, string, error) {
	l.n++
	if l.n == 1 {
		return true, "me", nil
	}
	<-ctx.Done()
	return false, "", ctx.Err()
}
func (l *hangingLease) Release(context.Context) error { return nil }
func (l *hangingLease) RenewEvery() time.Duration     { return 10 * time.Second }

// A leader that cannot renew stops acting by its local deadline (2/3 of the TTL after its last renewal), so a
// standby that takes over when the lease expires never acts beside it.
func TestLoopLeaderStopsAtItsLocalDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		blocked := &blockingApplier{}
		fx.flow.Apply = blocked
		l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
		l.Lease = &hangingLease{}
		start := time.Now()
		l.Cycle(context.Background())
		stopped := time.Since(start)
		if !errors.Is(blocked.err, context.Canceled) || stopped > 20*time.Second+time.Millisecond {
			t.Fatalf("the leader acted for %s without a lease (TTL 30s, local deadline 20s): %v", stopped, blocked.err)
		}
	})
}

// flakyLease is held until its engine stops answering (a partitioned or stopped manager).
type flakyLease struct{ down bool }

func (l *flakyLease) Acquire(context.Context) (bool, string, error) {
	if l.down {
		return false, "", errors.New("the swarm does not have a leader")
	}
	return true, "me", nil
}
func (l *flakyLease) Release(context.Context) error { return nil }
func (l *flakyLease) RenewEvery() time.Duration     { return time.Second }

// A leader whose engine stops answering does not act, and stops saying it leads: a standby elsewhere takes
// over, and the metric (and whoever watches it) must not show two leaders.
func TestLoopLeaderThatCannotReachItsEngineSaysSo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
		lease := &flakyLease{}
		l.Lease = lease
		if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success || !l.Metrics.(*recorder).leader {
			t.Fatalf("holding the lease: %+v, leader metric %v", rec, l.Metrics.(*recorder).leader)
		}
		lease.down = true
		time.Sleep(2 * time.Second) // past the renewal period: the next cycle renews
		if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Error || l.Metrics.(*recorder).leader {
			t.Fatalf("engine gone: %+v, leader metric %v, want an error and not the leader", rec, l.Metrics.(*recorder).leader)
		}
	})
}

// Between cycles the leader renews its lease, so with an interval longer than the TTL it stays the leader.
func TestLoopRenewsBetweenCycles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
		lease := &fakeLease{held: true}
		l.Lease, l.Interval = lease, time.Minute
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = l.Run(ctx); close(done) }()
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if lease.n < 5 { // one per cycle, then every RenewEvery (1s here) while waiting
			t.Fatalf("the lease was renewed %d times in a minute between cycles", lease.n)
		}
		cancel()
		<-done
	})
}

// countOrder is a Metrics that notes what /status (Last) shows when a cycle is counted.
type countOrder struct {
	recorder
	l     *Loop
	shown []outcome.Outcome
}

func (c *countOrder) Cycle(Record, time.Duration) { c.shown = append(c.shown, c.l.Last().Outcome) }

// Whoever sees the cycle count move (sawmill_sync_duration_seconds_count) reads that cycle in /status, not the
// one before: the count moves only once the cycle, its reports delivered, is on record.
func TestACycleIsCountedOnceStatusShowsIt(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	fx.eval.deny = true
	l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
	m := &countOrder{l: l}
	l.Metrics = m
	l.Cycle(context.Background()) // refused
	fx.eval.deny = false
	l.Cycle(context.Background()) // success, reported
	if want := []outcome.Outcome{outcome.Refused, outcome.Success}; !slices.Equal(m.shown, want) {
		t.Fatalf("/status showed %v when each cycle was counted, want %v", m.shown, want)
	}
}
