package reconcile

import (
	"context"

	"github.com/sabeiro/sawmill/internal/report"
)

// Shower is the optional side of a Reporter that reads the environment's deployment records back
// (*report.GitLab): whether the newest one the agents made is already of this release, running or successful.
type Shower interface {
	Shows(ctx context.Context, o report.Outcome) (bool, error)
}

// alreadyShown reports whether GitLab's environment already shows rec as the agents' newest deployment, so
// that no running record is created for it. It asks GitLab only on the first cycle after this agent took the
// lease or started (its state may not know what another agent, or its former self, recorded); later cycles,
// the no-op path among them, make no call. An error reading the records counts as not shown: a duplicate
// record is better than a rollout GitLab does not show.
func (l *Loop) alreadyShown(ctx context.Context, rec Record) bool {
	if l.deploymentsChecked {
		return false
	}
	l.deploymentsChecked = true
	s, ok := l.Reporter.(Shower)
	if !ok || !l.RecordDeployments || rec.Ref == "" || rec.Commit == "" {
		return false
	}
	shown, err := s.Shows(ctx, report.Outcome{Kind: report.KindDeployment, Environment: l.Environment, Commit: rec.Commit, Ref: rec.Ref, Tag: rec.Tag})
	if err != nil {
		l.Log.Warn("reading the environment's deployments", "err", l.Redact.String(err.Error()))
		return false
	}
	if shown {
		l.Log.Info("the environment already shows this release from an agent; no new deployment record", "release", rec.Release, "commit", rec.Commit)
	}
	return shown
}
