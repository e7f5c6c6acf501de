package report

import (
	"context"
	"fmt"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// Kind is what an Outcome is reported as.
type Kind string

// KindDeployment reports an outcome as a deployment record of the environment.
const KindDeployment Kind = "deployment"

// recordPages bounds how far back deployment looks for the agent's own records.
const recordPages = 3

// deployment records o as a deployment of o.Environment that no job created (GitLab refuses to update a
// deployment a CI job created: "Deployments created using GitLab CI can not be updated using the API"; see
// docs/pipegen.md), so that the environment's page shows what the agent rolled out and how it ended.
//
// State Running creates the record (status running) unless a running record of o.Commit exists. A final
// state (success, failed) updates the running record of o.Commit; without one it creates the record with
// the final status, unless the environment's newest record already says exactly that. Both make a retried
// delivery (an answer lost on the way back) harmless: GitLab is told once. Running records of other commits
// (a rollout that was interrupted and superseded) are set to canceled.
func (g *GitLab) deployment(ctx context.Context, o Outcome) error {
	if o.Ref == "" || o.Commit == "" {
		return fmt.Errorf("gitlab: deployment record of %s: no ref or commit", o.Environment)
	}
	records, err := g.records(ctx, o.Environment)
	if err != nil {
		return err
	}
	if o.State == Running {
		for _, d := range records {
			if d.Status == string(Running) && d.SHA == o.Commit {
				return nil // created before; the answer was lost
			}
		}
		return g.createDeployment(ctx, o)
	}
	updated := false
	for _, d := range records {
		if d.Status != string(Running) {
			continue
		}
		status := gitlab.DeploymentStatusValue(o.State)
		if d.SHA != o.Commit || updated {
			status = gitlab.DeploymentStatusCanceled
		}
		if _, _, err := g.Client.Deployments.UpdateProjectDeployment(g.Project, d.ID, &gitlab.UpdateProjectDeploymentOptions{Status: &status},
			gitlab.WithContext(ctx)); err != nil {
			return fmt.Errorf("gitlab: update deployment %d of %s: %w", d.ID, o.Environment, err)
		}
		updated = updated || d.SHA == o.Commit
	}
	if updated {
		return nil
	}
	if len(records) > 0 && records[0].SHA == o.Commit && records[0].Status == string(o.State) {
		return nil // created before; the answer was lost
	}
	return g.createDeployment(ctx, o)
}

func (g *GitLab) createDeployment(ctx context.Context, o Outcome) error {
	status := gitlab.DeploymentStatusValue(o.State)
	_, _, err := g.Client.Deployments.CreateProjectDeployment(g.Project, &gitlab.CreateProjectDeploymentOptions{
		Environment: gitlab.Ptr(o.Environment), Ref: gitlab.Ptr(o.Ref), SHA: gitlab.Ptr(o.Commit), Tag: gitlab.Ptr(o.Tag), Status: &status,
	}, gitlab.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("gitlab: create a %s deployment of %s in %s: %w", o.State, o.Commit, o.Environment, err)
	}
	return nil
}

// records returns the environment's deployments that no job created (the agent's), newest first.
func (g *GitLab) records(ctx context.Context, env string) ([]*gitlab.Deployment, error) {
	opt := &gitlab.ListProjectDeploymentsOptions{
		ListOptions: gitlab.ListOptions{PerPage: 100, Page: 1},
		Environment: gitlab.Ptr(env),
		OrderBy:     gitlab.Ptr("id"),
		Sort:        gitlab.Ptr("desc"),
	}
	var out []*gitlab.Deployment
	for range recordPages {
		ds, resp, err := g.Client.Deployments.ListProjectDeployments(g.Project, opt, gitlab.WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("gitlab: deployments of %s: %w", env, err)
		}
		for _, d := range ds {
			if d.Deployable.ID == 0 {
				out = append(out, d)
			}
		}
		if len(out) > 0 || resp == nil || resp.NextPage == 0 {
			break
		}
		opt.Page = resp.NextPage
	}
	return out, nil
}

// Shows reports whether the environment's newest deployment record that no job created (the agent's, of
// any agent) is already of o's commit and ref and running or successful: an agent that just took the lease
// over, or restarted without its state, then records nothing for a release that already runs (the page would
// otherwise list it twice). A failed record does not count: rolling that release out again is news.
func (g *GitLab) Shows(ctx context.Context, o Outcome) (bool, error) {
	records, err := g.records(ctx, o.Environment)
	if err != nil || len(records) == 0 {
		return false, err
	}
	d := records[0]
	return d.SHA == o.Commit && d.Ref == o.Ref && (d.Status == string(Running) || d.Status == string(Success)), nil
}
