package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/sabeiro/sawmill/internal/stack"
)

// countingObserver returns a new stack per call, numbered by Services' length, or err.
type countingObserver struct {
	calls atomic.Int32
	err   error
}

func (c *countingObserver) Observe(_ context.Context, name string) (*stack.Stack, error) {
	n := c.calls.Add(1)
	return &stack.Stack{Name: name, Services: make([]stack.Service, n)}, c.err
}

// The early observation answers the first Observe of its stack, once; a later call and another stack are
// observed anew; its error is the flow's.
func TestEarlyObserverAnswersOnceForItsStack(t *testing.T) {
	ctx := context.Background()
	next := &countingObserver{}
	e := observeEarly(ctx, next, "app")
	st, err := e.Observe(ctx, "app")
	if err != nil || st.Name != "app" || len(st.Services) != 1 {
		t.Fatalf("first observe: %+v, %v", st, err)
	}
	if st, _ := e.Observe(ctx, "app"); len(st.Services) != 2 {
		t.Fatalf("second observe of the stack was not a new one: %d", len(st.Services))
	}
	if st, _ := e.Observe(ctx, "other"); st.Name != "other" || next.calls.Load() != 3 {
		t.Fatalf("another stack: %+v after %d calls", st, next.calls.Load())
	}

	failing := &countingObserver{err: errors.New("engine gone")}
	if _, err := observeEarly(ctx, failing, "app").Observe(ctx, "app"); err == nil || failing.calls.Load() != 1 {
		t.Fatalf("err = %v after %d calls, want the early observation's error", err, failing.calls.Load())
	}
}
