package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// cachedLoader is the load step with --cache-dir: compose.LoadCached, whose stacks never carry the contents
// of secrets and configs. With comparisons, the loaded stack's remembered comparisons are read too.
func cachedLoader(dir string, comparisons *planCache) reconcile.Loader {
	return reconcile.LoadFunc(func(ctx context.Context, o compose.Options) (*stack.Stack, error) {
		st, _, err := compose.LoadCached(ctx, o, dir)
		if err == nil && comparisons != nil {
			comparisons.read(st.Name)
		}
		return st, err
	})
}

// planCache keeps apply's service comparisons (plan.Differ) in the cache directory, one file per stack and
// agent build: a comparison is reused only while the observed service's ID and version, the wanted spec's
// hash and the swarm's network names are those compared, so a no-op apply does not compare the same specs
// again. The files hold service names and the names of changed fields, never a value.
type planCache struct {
	dir     string
	nameKey []byte
	differ  *plan.Differ
	log     *slog.Logger
	stack   string
	seen    []plan.Comparison // as read
}

type planCacheFile struct {
	Stack       string            `json:"stack"`
	Comparisons []plan.Comparison `json:"comparisons"`
}

func (p *planCache) path(stackName string) string {
	return compose.CacheFile(p.dir, "plan", p.nameKey, stackName)
}

// read gives the Differ the comparisons kept for stackName (none when the file is missing or not the
// stack's).
func (p *planCache) read(stackName string) {
	p.stack, p.seen = stackName, nil
	var f planCacheFile
	if b, err := os.ReadFile(p.path(stackName)); err == nil && json.Unmarshal(b, &f) == nil && f.Stack == stackName {
		p.seen = f.Comparisons
	}
	p.differ.Remember(stackName, p.seen)
}

// write keeps the comparisons of the last plan, when they are not those read.
func (p *planCache) write() {
	if p.stack == "" {
		return
	}
	cs := p.differ.Comparisons(p.stack)
	p.log.Debug("plan: service comparisons", "reused", p.differ.Reused(), "kept", len(cs))
	if slices.EqualFunc(cs, p.seen, func(a, b plan.Comparison) bool {
		return a.Service == b.Service && a.Key == b.Key && a.Drift == b.Drift && slices.Equal(a.Fields, b.Fields)
	}) {
		return
	}
	if b, err := json.Marshal(planCacheFile{Stack: p.stack, Comparisons: cs}); err == nil {
		compose.WriteCacheFile(p.dir, p.path(p.stack), b)
	}
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
