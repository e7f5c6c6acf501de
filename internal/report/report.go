// Package report sends the outcome of a rollout back to GitLab, so that the commit and the environment show
// what really runs: a commit status with the name `sawmill/<environment>` on the release's commit, with the
// reason on failure (signature, policy, convergence, timeout); and (Kind KindDeployment) a deployment of the
// environment that the agent creates and updates itself (running, then success or failed), so the
// environment page shows the version actually running and a refused rollout as failed.
//
// In: an Outcome. Out: calls to GitLab's commit status API (POST /projects/:id/statuses/:sha) and Deployments
// API (GET, POST /projects/:id/deployments, PUT /projects/:id/deployments/:id) through client-go. It imports
// client-go and the standard library.
package report

import (
	"context"
	"fmt"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// State is the outcome of one rollout.
type State string

// The states, as GitLab's commit status API names them.
const (
	Running State = "running"
	Success State = "success"
	Failed  State = "failed"
)

// Outcome is what is reported.
type Outcome struct {
	Environment string
	Commit      string
	Ref         string
	PipelineID  int64
	State       State
	// Reason is a short, secret-free summary (GitLab keeps 255 characters of it).
	Reason string
	// Kind says what is reported: a commit status (empty) or a deployment record (KindDeployment, which
	// needs Ref and Tag).
	Kind Kind `json:",omitempty"`
	// Tag says Ref is a tag (deployment records).
	Tag bool `json:",omitempty"`
}

// GitLab reports through the commit status API.
type GitLab struct {
	Client  *gitlab.Client
	Project string
}

// Report posts the outcome as the commit status `sawmill/<environment>`, or records it as a deployment of
// the environment (KindDeployment).
func (g *GitLab) Report(ctx context.Context, o Outcome) error {
	if o.Kind == KindDeployment {
		return g.deployment(ctx, o)
	}
	desc := o.Reason
	if len(desc) > 255 {
		desc = desc[:252] + "..."
	}
	opt := &gitlab.SetCommitStatusOptions{
		State:       gitlab.BuildStateValue(o.State),
		Name:        gitlab.Ptr("sawmill/" + o.Environment),
		Description: gitlab.Ptr(desc),
	}
	if o.Ref != "" {
		opt.Ref = gitlab.Ptr(o.Ref)
	}
	if _, _, err := g.Client.Commits.SetCommitStatus(g.Project, o.Commit, opt, gitlab.WithContext(ctx)); err != nil {
		return fmt.Errorf("gitlab: commit status of %s: %w", o.Commit, err)
	}
	return nil
}
