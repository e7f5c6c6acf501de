package reconcile

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	sw "github.com/sabeiro/sawmill/internal/swarm"
)

// stoppingApplier is a rollout interrupted because the agent is stopping: the convergence wait ends with ctx.
type stoppingApplier struct {
	stop  context.CancelFunc
	calls *int
}

func (s stoppingApplier) Apply(ctx context.Context, p *plan.Plan) (*sw.Result, error) {
	*s.calls++
	s.stop() // Swarm stops this agent (its start-first successor is healthy)
	<-ctx.Done()
	return failingApplier{calls: new(int)}.Apply(ctx, p)
}

// An agent stopped mid-rollout (the old agent of its own self-upgrade) neither records nor reports the
// release as failed: the agent that takes over rolls it out and reports it.
func TestLoopInterruptedByStopIsNotAFailure(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.json")
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	applies := 0
	ctx, stop := context.WithCancel(context.Background())
	fx.flow.Apply = stoppingApplier{stop: stop, calls: &applies}
	src := &fakeSource{commit: "abc"}
	rep := &fakeReporter{}
	l := newLoop(t, fx, src, rep, state)
	if rec := l.Cycle(ctx); rec.Outcome != outcome.Error || rec.Held {
		t.Fatalf("an interrupted cycle: %+v, want an error outcome (not failed, not held)", rec)
	}
	if len(rep.sent) != 0 {
		t.Fatalf("reported %+v for an interrupted cycle", rep.sent)
	}
	// The successor reads the same state: it rolls the release out and reports success.
	fx.flow.Apply = fakeApplier{calls: &fx.calls, writes: &fx.writes}
	next := newLoop(t, fx, src, rep, state)
	if rec := next.Cycle(context.Background()); rec.Outcome != outcome.Success || rec.Held {
		t.Fatalf("the successor's cycle: %+v", rec)
	}
	if len(rep.sent) != 1 || rep.sent[0].State != "success" {
		t.Fatalf("reports %+v, want one success", rep.sent)
	}
}
