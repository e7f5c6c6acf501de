package reconcile

import (
	"context"
	"errors"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/stack"
	sw "github.com/sabeiro/sawmill/internal/swarm"
)

type notices struct {
	recs   []Record
	stacks [][]StackOutcome
}

func (n *notices) Notify(rec Record, stacks []StackOutcome) {
	n.recs = append(n.recs, rec)
	n.stacks = append(n.stacks, stacks)
}

// The notifier is told each cycle's final record (redacted, timed) and each stack's outcome.
func TestLoopTellsTheNotifier(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	fx.eval.deny = true
	n := &notices{}
	l := newLoop(t, fx, &fakeSource{commit: "bad"}, &fakeReporter{}, "")
	l.Notifier = n
	l.Cycle(context.Background())
	fx.eval.deny = false
	l.Cycle(context.Background())
	if len(n.recs) != 2 || n.recs[0].Outcome != outcome.Refused || n.recs[0].Time.IsZero() || n.recs[1].Outcome != outcome.Success {
		t.Fatalf("records %+v", n.recs)
	}
	if s := n.stacks[0]; len(s) != 1 || s[0].Stack != "shop" || s[0].Outcome != outcome.Refused {
		t.Fatalf("stacks of the refused cycle: %+v", s)
	}
	if s := n.stacks[1]; len(s) != 1 || s[0].Outcome != outcome.Success || len(s[0].Drift) != 0 {
		t.Fatalf("stacks of the successful cycle: %+v", s)
	}
}

// Drift put back is what an applied plan changed because it drifted; a stack that failed puts nothing back.
func TestStackOutcomeDrift(t *testing.T) {
	c := &Cycle{Plan: &plan.Plan{Changes: []plan.Change{
		{Kind: stack.KindService, Name: "shop_web", Action: plan.Configured, Drift: true},
		{Kind: stack.KindService, Name: "shop_api", Action: plan.Configured},
	}}, Result: &sw.Result{}}
	if so := stackOutcome("shop", c, nil); so.Outcome != outcome.Success || len(so.Drift) != 1 || so.Drift[0] != "shop/shop_web" {
		t.Fatalf("%+v", so)
	}
	if so := stackOutcome("shop", c, fault.RolloutErr(errors.New("task failed"))); so.Outcome != outcome.Failed || len(so.Drift) != 0 {
		t.Fatalf("%+v", so)
	}
	c.Result = nil // plan only: nothing was put back
	if so := stackOutcome("shop", c, nil); len(so.Drift) != 0 {
		t.Fatalf("%+v", so)
	}
}
