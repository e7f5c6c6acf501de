// Package reconcile runs the agent's steps in order for one stack: load the compose files, check the engine
// is a swarm manager, observe the stack, compute the plan, and (for apply) apply it and wait for convergence.
// It is the only package that imports every stage; the stages do not import each other sideways.
//
// In: compose options, a Docker client, a logger. Out: the plan and the apply result.
package reconcile

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// Plan loads the wanted stack and compares it with the swarm. It makes read calls only.
func Plan(ctx context.Context, r swarm.Reader, o compose.Options) (*plan.Plan, error) {
	wanted, err := compose.Load(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := swarm.CheckManager(ctx, r); err != nil {
		return nil, fault.InvalidErr(err)
	}
	observed, err := swarm.Observe(ctx, r, wanted.Name)
	if err != nil {
		return nil, fmt.Errorf("observe stack %s: %w", wanted.Name, err)
	}
	return plan.Compute(wanted, observed)
}

// Apply plans and applies. The returned plan is set whenever planning succeeded, also on a failed rollout.
func Apply(ctx context.Context, a *swarm.Applier, o compose.Options, log *slog.Logger) (*swarm.Result, error) {
	p, err := Plan(ctx, a.Client, o)
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
