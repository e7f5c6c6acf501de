package reconcile

import (
	"github.com/sabeiro/sawmill/internal/outcome"
)

// Notifier is told every cycle once its record is final, with each stack's part of it (internal/notify,
// wired by cmd/agent, decides what is worth a message). Notify must return at once: it only queues.
type Notifier interface {
	Notify(rec Record, stacks []StackOutcome)
}

// StackOutcome is one stack's part of a cycle: its outcome, and the services whose drift it put back.
type StackOutcome struct {
	Stack   string
	Outcome outcome.Outcome
	// Drift names the objects ("stack/name": services, mostly) changed outside the agent that the cycle put back.
	Drift []string
}

// stackOutcome summarises one stack's run through the flow.
func stackOutcome(name string, c *Cycle, err error) StackOutcome {
	so := StackOutcome{Stack: name, Outcome: outcome.Of(err)}
	if err != nil || c == nil || c.Result == nil || c.Plan == nil {
		return so
	}
	for _, ch := range c.Plan.Changes {
		if ch.Drift {
			so.Drift = append(so.Drift, name+"/"+ch.Name)
		}
	}
	return so
}
