package reconcile

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/policy"
)

// A leader whose last renewal started less than RenewEvery ago runs its next cycle without renewing (two API
// calls, one a Raft write, fewer per cycle); once RenewEvery has passed, the cycle renews first again.
func TestLoopRenewsOncePerRenewEveryAcrossCycles(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
		lease := &fakeLease{held: true}
		l.Lease = lease
		for i := range 5 {
			if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success {
				t.Fatalf("cycle %d: %+v", i, rec)
			}
			time.Sleep(100 * time.Millisecond) // the daemon's interval, shorter than RenewEvery (1s here)
		}
		if lease.n != 1 {
			t.Fatalf("%d renewals for 5 cycles within 0.5s, want 1", lease.n)
		}
		time.Sleep(time.Second)
		l.Cycle(context.Background())
		if lease.n != 2 {
			t.Fatalf("%d renewals after RenewEvery passed, want 2", lease.n)
		}
	})
}

// A cycle that started on a fresh lease (no renewal of its own) still renews it on the schedule of the last
// renewal while it runs, and stops when the lease is lost then.
func TestLoopCycleOnAFreshLeaseStopsWhenTheLeaseIsLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		l := newLoop(t, fx, &fakeSource{commit: "abc"}, &fakeReporter{}, "")
		lease := &fakeLease{held: true, lostAt: 2}
		l.Lease = lease
		if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success {
			t.Fatalf("first cycle: %+v", rec)
		}
		renewed := time.Now()
		time.Sleep(400 * time.Millisecond)
		blocked := &blockingApplier{}
		fx.flow.Apply = blocked
		fx.flow.Differ = nil
		src := l.Source.(*fakeSource)
		src.commit = "def" // a new release: the cycle applies (and blocks)
		rec := l.Cycle(context.Background())
		stopped := time.Since(renewed)
		if rec.Outcome != outcome.Error || !errors.Is(blocked.err, context.Canceled) {
			t.Fatalf("record %+v, apply ended with %v: want the cycle cancelled when the lease is lost", rec, blocked.err)
		}
		if lease.n != 2 || stopped != time.Second {
			t.Fatalf("%d renewals, stopped %s after the last renewal: want the renewal due 1s after it, and the stop then", lease.n, stopped)
		}
	})
}
