// Package reconcile runs the agent's steps in order for one stack: load the compose files, check the engine
// is a swarm manager, run the checks (the policy gate) on the wanted stack, observe the stack, compute the plan, and (for apply) apply it and wait for convergence.
// It is the only package that imports every stage; the stages do not import each other sideways.
//
// In: compose options, a Docker client, a logger. Out: the plan and the apply result.
package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// Check judges the wanted stack, and may rewrite it (Signatures pins images to their verified digests),
// before the plan is computed and anything is written (observing, which only reads, may overlap). The
// checks run in order; an error stops the run (a fault.Refused one exits 3).
type Check func(ctx context.Context, wanted *stack.Stack) error

// Plan loads the wanted stack, runs the checks on it, and compares it with the swarm. It makes read calls only.
func Plan(ctx context.Context, r swarm.Reader, o compose.Options, log *slog.Logger, checks ...Check) (*plan.Plan, error) {
	t0 := time.Now()
	// Observing only reads; when the stack name is known it overlaps with loading the compose files.
	type observation struct {
		st  *stack.Stack
		err error
	}
	observe := func(name string) observation {
		if err := swarm.CheckManager(ctx, r); err != nil {
			return observation{err: fault.InvalidErr(err)}
		}
		st, err := swarm.Observe(ctx, r, name)
		if err != nil {
			err = fmt.Errorf("observe stack %s: %w", name, err)
		}
		return observation{st, err}
	}
	var early chan observation
	if o.Stack != "" {
		early = make(chan observation, 1)
		go func() { early <- observe(o.Stack) }()
	}
	wanted, err := compose.Load(ctx, o)
	if err != nil {
		return nil, err
	}
	for _, check := range checks {
		if err := check(ctx, wanted); err != nil {
			return nil, err
		}
	}
	t1 := time.Now()
	var obs observation
	if early != nil {
		obs = <-early
	} else {
		obs = observe(wanted.Name)
	}
	if obs.err != nil {
		return nil, obs.err
	}
	observed := obs.st
	t2 := time.Now()
	p, err := plan.Compute(wanted, observed)
	log.Debug("planned", "stack", wanted.Name, "load", t1.Sub(t0), "observe", t2.Sub(t1), "compute", time.Since(t2))
	return p, err
}

// Apply plans and applies. The returned plan is set whenever planning succeeded, also on a failed rollout.
func Apply(ctx context.Context, a *swarm.Applier, o compose.Options, log *slog.Logger, checks ...Check) (*swarm.Result, error) {
	p, err := Plan(ctx, a.Client, o, log, checks...)
	if err != nil {
		return nil, err
	}
	log.Info("plan", "stack", p.Stack, "writes", p.Writes())
	res, err := a.Apply(ctx, p)
	if err != nil {
		return res, err
	}
	return res, nil
}
