package reconcile

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/source"
)

// turn is what one cycle chose and saw, for the history, the pin and the status page.
type turn struct {
	rel *source.Release
	// latest is the source's newest release; fromHistory: rel is a kept release (a rollback or the pin).
	latest      string
	fromHistory bool
	rollback    *Request
	target      HistoryEntry
	images      []string
	stacks      []StackView
	ran         bool
}

// choose handles a pending request (agent rollback, agent unpin) and the pin, and returns the release this
// cycle rolls out: the source's newest (rel, key) or a kept release of the history. A rollback or a pinned
// release goes through every step as any release does (signatures, policies), re-checked from its copy.
func (l *Loop) choose(ctx context.Context, rel *source.Release, key string) (*source.Release, string, error) {
	l.turn = turn{rel: rel, latest: key}
	var notHere error // the release asked for is not in this agent's history
	req, err := l.nextRequest(ctx)
	switch {
	case err != nil:
		l.Log.Error("request", "err", err)
		if req != nil {
			l.answerRequest(req, "", outcome.Invalid, err.Error())
		}
	case req != nil && req.Action == ActionUnpin:
		if l.pin == nil {
			l.answerRequest(req, "", outcome.Success, "not pinned")
		} else {
			l.Log.Info("unpinned by request", "release", l.pin.Release)
			l.answerRequest(req, l.pin.Release, outcome.Success, "unpinned from "+l.pin.Release+": following the newest release again")
			l.setPin(nil)
		}
	case req != nil:
		h, ferr := FindRelease(l.history, req.To)
		_, refetchable := l.Source.(Refetcher)
		if ferr != nil && refetchable && strings.HasPrefix(req.To, "deployment-") && releaseKeyRe.MatchString(req.To) {
			// Not in this agent's history (another agent rolled it out): fetched again from the source below.
			notHere, h, ferr = ferr, HistoryEntry{Release: req.To}, nil
		}
		if ferr == nil && !h.Kept && !refetchable {
			ferr = fmt.Errorf("release %s was not kept: it cannot be rolled back to", h.Release)
		}
		if ferr != nil {
			l.answerRequest(req, "", outcome.Invalid, ferr.Error())
		} else {
			l.Log.Info("rollback requested", "to", h.Release, "commit", h.Commit)
			l.turn.rollback, l.turn.target = req, h
		}
	}
	if p := l.pin; p != nil && l.turn.rollback == nil && p.Over != key {
		l.Log.Info("a newer release arrived: the pin lifts", "pinned", p.Release, "newest", key)
		l.setPin(nil)
	}
	return l.target(ctx, rel, key, notHere)
}

// target returns the release this cycle rolls out, once the request is handled: the rollback's, else the
// pin's, else the source's newest. A rollback whose release cannot be had is answered, and the cycle goes on
// as if it had not been asked (the pin, if any, holds).
func (l *Loop) target(ctx context.Context, rel *source.Release, key string, notHere error) (*source.Release, string, error) {
	var target HistoryEntry
	switch {
	case l.turn.rollback != nil:
		target = l.turn.target
	case l.pin != nil:
		p := l.pin
		target = HistoryEntry{Release: p.Release, Commit: p.Commit, Ref: p.Ref, Tag: p.Tag, DeploymentID: p.DeploymentID, JobID: p.JobID, Kept: true}
	default:
		return rel, key, nil
	}
	kept, err := keptRelease(l.HistoryDir, target)
	if err != nil {
		// Not kept here (a pin another agent set, read from the swarm; a release another agent rolled out):
		// fetched again from the source, then kept.
		if kept, err = l.refetch(ctx, target, err); err == nil {
			target.Commit, target.DeploymentID, target.JobID, target.Ref, target.Tag = kept.Manifest.Commit, kept.DeploymentID, kept.JobID, kept.Ref, kept.Tag
			if l.turn.rollback != nil {
				l.turn.target = target
			}
		}
	}
	if err != nil {
		if l.turn.rollback != nil {
			if notHere != nil {
				err = fmt.Errorf("%w; %w", notHere, err)
			}
			l.answerRequest(l.turn.rollback, target.Release, outcome.Invalid, err.Error())
			l.turn.rollback = nil
			return l.target(ctx, rel, key, nil)
		}
		if outcome.Of(err) == outcome.Error {
			return nil, target.Release, fmt.Errorf("pinned release: %w", err) // transient: tried again next cycle
		}
		return nil, target.Release, fault.InvalidErr(fmt.Errorf("pinned release: %w (agent unpin follows the newest release again)", err))
	}
	l.turn.rel, l.turn.fromHistory = kept, true
	return kept, target.Release, nil
}

// answerRequest records the daemon's answer to a request in the state file.
func (l *Loop) answerRequest(req *Request, release string, o outcome.Outcome, reason string) {
	a := &Answer{ID: req.ID, Action: req.Action, Release: release, Outcome: o, Reason: l.Redact.String(reason), Time: l.Now().UTC()}
	l.mu.Lock()
	l.answer = a
	l.mu.Unlock()
	l.dirty = true
	if req.shared {
		l.answerShared(a)
	}
}

func (l *Loop) setPin(p *Pin) {
	l.mu.Lock()
	l.pin = p
	l.mu.Unlock()
	l.dirty = true
	l.savePin(p)
}

// afterCycle records the cycle in the history (a release rolled out, or a new outcome of it), keeps the
// release's files for a rollback, answers a rollback request and sets the pin when it succeeded.
func (l *Loop) afterCycle(rec Record, keep bool) {
	t := l.turn
	l.turn = turn{}
	l.mu.Lock()
	l.cycles = append([]Record{rec}, l.cycles[:min(len(l.cycles), maxCycles-1)]...)
	if t.ran && !rec.Held {
		l.stacks = t.stacks
	}
	l.mu.Unlock()
	if t.rollback != nil {
		reason := rec.Reason
		if rec.Outcome == outcome.Success {
			reason = fmt.Sprintf("rolled back to %s; pinned there until a release newer than %s arrives or agent unpin", t.target.Release, t.latest)
			why := t.rollback.Reason
			if why == "" {
				why = "agent rollback"
			}
			h := t.target
			l.setPin(&Pin{Release: h.Release, Commit: h.Commit, Over: t.latest, Reason: l.Redact.String(why), Since: rec.Time,
				Ref: h.Ref, Tag: h.Tag, DeploymentID: h.DeploymentID, JobID: h.JobID})
		}
		l.answerRequest(t.rollback, t.target.Release, rec.Outcome, reason)
	}
	if !keep || rec.Held || !t.ran || t.rel == nil {
		return
	}
	var newest HistoryEntry
	if len(l.history) > 0 {
		newest = l.history[0]
	}
	if t.rollback == nil && newest.Release == rec.Release && newest.Outcome == rec.Outcome && newest.Reason == rec.Reason {
		return
	}
	m := t.rel.Manifest
	e := HistoryEntry{Release: rec.Release, Commit: rec.Commit, Ref: t.rel.Ref, Tag: t.rel.Tag, DeploymentID: t.rel.DeploymentID,
		JobID: t.rel.JobID, Pipeline: m.Pipeline.URL, Time: rec.Time, Outcome: rec.Outcome, Reason: rec.Reason,
		Images: t.images, Rollback: t.rollback != nil}
	if l.HistoryDir != "" {
		if err := keepRelease(l.HistoryDir, rec.Release, t.rel.Dir); err != nil {
			l.Log.Warn("the release is listed in the history but not kept: it cannot be rolled back to", "release", rec.Release, "err", err)
		} else {
			e.Kept = true
		}
	}
	l.mu.Lock()
	l.history = trimHistory(l.HistoryDir, append([]HistoryEntry{e}, l.history...), l.HistoryKeep, l.pin)
	l.mu.Unlock()
	l.dirty = true
	l.shareHistory()
}

// maxCycles is how many cycles the status page lists.
const maxCycles = 10

// seen adds one stack's cycle to this turn: its images for the history, its view for the status page.
func (l *Loop) seen(c *Cycle, release string) {
	if c.Wanted != nil {
		for _, s := range c.Wanted.Services {
			if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil && !slices.Contains(l.turn.images, cs.Image) {
				l.turn.images = append(l.turn.images, cs.Image)
			}
		}
		slices.Sort(l.turn.images)
	}
	v := l.stackView(c)
	v.Release = release
	l.turn.stacks = append(l.turn.stacks, v)
}

// Pinned returns the pin, nil when the environment follows its newest release.
func (l *Loop) Pinned() *Pin {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pin == nil {
		return nil
	}
	p := *l.pin
	return &p
}

// History returns the releases rolled out, newest first.
func (l *Loop) History() []HistoryEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.history)
}

// requestTicks ticks every second while the loop runs, so a request (agent rollback, agent unpin) starts a
// cycle at once; nil (never) without a request file. stop stops the ticker.
func (l *Loop) requestTicks() (ticks <-chan time.Time, stop func()) {
	if l.RequestFile == "" {
		return nil, func() {}
	}
	t := time.NewTicker(time.Second)
	return t.C, t.Stop
}
