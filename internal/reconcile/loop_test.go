package reconcile

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

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
}

func (r *recorder) Rejected(o outcome.Outcome) { r.rejected = append(r.rejected, o) }

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

		// Errors: 1s, 2s, 4s, then capped at the jittered interval (5s).
		want := []time.Duration{0, 1 * time.Second, 3 * time.Second, 7 * time.Second, 12 * time.Second, 17 * time.Second}
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
