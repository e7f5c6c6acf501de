package reconcile

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/source"
)

// Refetcher gives a release again by its key (source.Follow: an earlier deployment of the environment, from
// GitLab), for a pin another agent set on a release this agent did not keep. The caller owns the release's
// directory.
type Refetcher interface {
	Release(ctx context.Context, key string) (*source.Release, error)
}

// loadPin reads the swarm's pin at the start of a cycle (Pins), which wins over the state file's: another
// agent may have set or lifted it. A pin this agent could not write before is written first instead. A pin
// that cannot be read is an error: the cycle rolls nothing out.
func (l *Loop) loadPin(ctx context.Context) error {
	if l.Pins == nil {
		return nil
	}
	l.loadSharedHistory(ctx)
	if l.pinUnsaved {
		if err := l.Pins.Save(ctx, l.Pinned()); err != nil {
			l.Log.Error("the pin is still not written to the swarm (an agent taking the lease over would not know it); retried next cycle", "err", err)
			return nil // this agent set or lifted it: its own is the pin
		}
		l.pinUnsaved = false
		return nil
	}
	p, err := l.Pins.Load(ctx)
	if err != nil {
		return fmt.Errorf("the swarm's pin cannot be read, so nothing is rolled out (agent unpin removes it): %w", err)
	}
	cur := l.Pinned()
	if samePin(p, cur) {
		return nil
	}
	if p != nil {
		l.Log.Info("pinned by the swarm's pin (set by agent rollback through another agent, or before a restart)", "release", p.Release, "over", p.Over, "reason", p.Reason)
	} else {
		l.Log.Info("the swarm has no pin: following the newest release (another agent lifted it)", "was", cur.Release)
	}
	l.mu.Lock()
	l.pin = p
	l.mu.Unlock()
	l.dirty = true
	return nil
}

// savePin writes the pin to the swarm (Pins) after this agent set or lifted it. When it cannot, the next
// cycle tries again, and keeps this agent's pin meanwhile.
func (l *Loop) savePin(p *Pin) {
	if l.Pins == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Pins.Save(ctx, p); err != nil {
		l.pinUnsaved = true
		l.Log.Error("the pin could not be written to the swarm; retried next cycle", "err", err)
		return
	}
	l.pinUnsaved = false
}

// refetch gets a release this agent did not keep (kerr) from the source again, keeps it in the
// history directory and returns the kept copy: it is checked as every release is (signatures, policies).
func (l *Loop) refetch(ctx context.Context, h HistoryEntry, kerr error) (*source.Release, error) {
	f, ok := l.Source.(Refetcher)
	if !ok {
		return nil, fault.InvalidErr(fmt.Errorf("%w; the source cannot fetch an earlier release again", kerr))
	}
	l.Log.Info("the pinned release is not kept here: fetching it from the source", "release", h.Release)
	rel, err := f.Release(ctx, h.Release)
	if err != nil {
		return nil, fmt.Errorf("fetching %s again: %w", h.Release, err)
	}
	if l.HistoryDir == "" {
		return rel, nil
	}
	defer os.RemoveAll(rel.Dir)
	if h.Commit != "" && rel.Manifest.Commit != h.Commit {
		return nil, fmt.Errorf("the source's %s is of commit %s, the pin names %s", h.Release, rel.Manifest.Commit, h.Commit)
	}
	if err := keepRelease(l.HistoryDir, h.Release, rel.Dir); err != nil {
		return nil, err
	}
	h.Kept = true
	h.DeploymentID, h.JobID, h.Ref, h.Tag = rel.DeploymentID, rel.JobID, rel.Ref, rel.Tag
	return keptRelease(l.HistoryDir, h)
}

// samePin reports whether two pins are the same (times compared as instants).
func samePin(a, b *Pin) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := *a, *b
	x.Since, y.Since = time.Time{}, time.Time{}
	return x == y && a.Since.Equal(b.Since)
}
