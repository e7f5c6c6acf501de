package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/sabeiro/sawmill/internal/stack"
)

// Mode says what the gate does with the decisions.
type Mode string

// The modes of the gate.
const (
	// ModeOff evaluates nothing.
	ModeOff Mode = "off"
	// ModeWarn reports every decision and refuses nothing.
	ModeWarn Mode = "warn"
	// ModeEnforce refuses a stack with a deny; warnings are reported.
	ModeEnforce Mode = "enforce"
)

// ParseMode reads a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeOff, ModeWarn, ModeEnforce:
		return m, nil
	}
	return "", fmt.Errorf("policy mode %q: use off, warn or enforce", s)
}

// Gate evaluates the policies on a wanted stack before anything is observed or written.
type Gate struct {
	Engine *Engine
	Mode   Mode
	Input  InputOptions
	// Signatures, when set, supplies the signature results of this stack's images (the verify stage's, for
	// this cycle); they replace Input.Signatures. An error stops the run.
	Signatures func(ctx context.Context, wanted *stack.Stack) (map[string]Signature, error)
	Log        *slog.Logger
	// Out receives the decisions as text lines. Nil: each decision is logged instead.
	Out io.Writer
}

// Check judges wanted. In enforce mode a deny is a fault.Refused error; warnings (and, in warn mode, denies)
// are logged and printed, and the rollout goes on.
func (g *Gate) Check(ctx context.Context, wanted *stack.Stack) error {
	if g == nil || g.Mode == ModeOff {
		return nil
	}
	opts := g.Input
	if g.Signatures != nil {
		sigs, err := g.Signatures(ctx, wanted)
		if err != nil {
			return err
		}
		opts.Signatures = sigs
	}
	rep, err := g.Engine.Evaluate(ctx, NewInput(wanted, opts))
	if err != nil {
		return err
	}
	if g.Log != nil {
		g.Log.Info("policy", "stack", rep.Stack, "mode", string(g.Mode), "revision", rep.Revision, "denies", len(rep.Denies()), "warnings", len(rep.Warns()), "elapsed", rep.Elapsed)
		if g.Out == nil {
			for _, d := range rep.Decisions {
				g.Log.Warn("policy "+d.Kind, "rule", d.Rule, "service", d.Service, "message", d.Message)
			}
		}
	}
	if g.Out != nil && len(rep.Decisions) > 0 {
		for _, d := range rep.Decisions {
			kind := d.Kind
			if g.Mode == ModeWarn && kind == Deny {
				kind = "deny (warn mode: not enforced)"
			}
			fmt.Fprintf(g.Out, "policy %s %s: %s\n", kind, d.Rule, d.Message)
		}
	}
	if g.Mode == ModeEnforce {
		return rep.Err()
	}
	return nil
}
