package reconcile

import (
	"context"
	"testing"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/policy"
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
