package main

import (
	"context"
	"sync/atomic"

	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/stack"
)

// earlyObserver observes a stack named on the command line while the compose files load (plan and apply):
// the list calls no longer wait for the load. Its first Observe of that stack returns that observation; any
// other call observes anew. An observation taken a few milliseconds earlier changes nothing apply could do
// wrong: every update carries the observed Swarm version, which the engine refuses once it is stale, and a
// create of an object that appeared meanwhile fails on its name.
type earlyObserver struct {
	next reconcile.Observer
	name string
	done chan struct{}
	st   *stack.Stack
	err  error
	used atomic.Bool
}

// observeEarly starts observing stack name through next (ctx ends it).
func observeEarly(ctx context.Context, next reconcile.Observer, name string) *earlyObserver {
	e := &earlyObserver{next: next, name: name, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.st, e.err = next.Observe(ctx, name)
	}()
	return e
}

// Observe returns the early observation on the first call for its stack, else observes through next.
func (e *earlyObserver) Observe(ctx context.Context, name string) (*stack.Stack, error) {
	if name != e.name || !e.used.CompareAndSwap(false, true) {
		return e.next.Observe(ctx, name)
	}
	select {
	case <-e.done:
		return e.st, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
