package main

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/verify"
)

// printChecks writes what the gates found, for people: a line per image verified, then a line per policy
// decision (in warn mode a deny is marked as not enforced).
func printChecks(w io.Writer, c *reconcile.Cycle, mode policy.Mode) {
	for _, r := range c.Signatures {
		fmt.Fprintln(w, signatureLine(r))
	}
	if c.Decisions == nil {
		return
	}
	for _, d := range c.Decisions.Decisions {
		kind := d.Kind
		if mode == policy.ModeWarn && kind == policy.Deny {
			kind = "deny (warn mode: not enforced)"
		}
		fmt.Fprintf(w, "policy %s %s: %s\n", kind, d.Rule, d.Message)
	}
}

func signatureLine(r verify.Result) string {
	line := fmt.Sprintf("image %s: %s", r.Ref, r.Status)
	if r.Digest != "" {
		line += " " + r.Digest
	}
	if len(r.Signers) > 0 {
		line += " signed by " + strings.Join(r.Signers, ", ")
	}
	if r.Reason != "" {
		line += " (" + r.Reason + ")"
	}
	return line
}

// printRun is what `agent apply` and `agent run --once` print of a stack: the checks, then the plan once
// it was applied.
func printRun(w io.Writer, c *reconcile.Cycle, mode policy.Mode) {
	printChecks(w, c, mode)
	if c.Result != nil && c.Result.Plan != nil {
		_ = plan.Render(w, c.Result.Plan)
	}
}

// logDecisions logs every policy decision, for output that is not text (and the daemon).
func logDecisions(log *slog.Logger, c *reconcile.Cycle) {
	if c.Decisions == nil {
		return
	}
	for _, d := range c.Decisions.Decisions {
		log.Warn("policy "+d.Kind, "rule", d.Rule, "service", d.Service, "message", d.Message)
	}
}

// decisionLog logs a stack's policy decisions when they differ from those of the stack's previous cycle (or
// the policy revision changed): the daemon judges an unchanged release every cycle, and would otherwise log
// the same warnings every interval. The first cycle after a start logs them all.
type decisionLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	last map[string]*policy.Report // by stack: revision and decisions
}

func (d *decisionLog) show(c *reconcile.Cycle) {
	rep := c.Decisions
	if rep == nil {
		return
	}
	d.mu.Lock()
	if d.last == nil {
		d.last = map[string]*policy.Report{}
	}
	prev := d.last[rep.Stack]
	same := prev != nil && prev.Revision == rep.Revision && slices.Equal(prev.Decisions, rep.Decisions)
	d.last[rep.Stack] = rep
	d.mu.Unlock()
	if !same {
		logDecisions(d.log, c)
	}
}
