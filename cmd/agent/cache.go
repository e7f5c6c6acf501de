package main

import (
	"context"
	"errors"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// cachedLoader is the load step with --cache-dir: compose.LoadCached, whose stacks never carry the contents
// of secrets and configs.
func cachedLoader(dir string) reconcile.Loader {
	return reconcile.LoadFunc(func(ctx context.Context, o compose.Options) (*stack.Stack, error) {
		st, _, err := compose.LoadCached(ctx, o, dir)
		return st, err
	})
}

// errNeedsValues stops an apply whose plan creates a secret or config that came from the cache without its
// content; apply then loads the compose files again.
var errNeedsValues = errors.New("the plan creates a secret or config: load again with its content")

// valueCheck refuses, before any write, a plan that creates a secret or config without its content.
type valueCheck struct{ next *swarm.Applier }

func (v valueCheck) Apply(ctx context.Context, p *plan.Plan) (*swarm.Result, error) {
	for _, objs := range []struct {
		kind stack.Kind
		list []stack.Object
	}{{stack.KindSecret, p.Wanted.Secrets}, {stack.KindConfig, p.Wanted.Configs}} {
		for _, c := range p.Of(objs.kind, plan.Created) {
			for _, o := range objs.list {
				if o.Name == c.Name && !o.External && o.Data == nil {
					return nil, errNeedsValues
				}
			}
		}
	}
	return v.next.Apply(ctx, p)
}
