package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/manifest"
)

// MaxFileSize bounds every file read from GitLab (release.json and compose files).
const MaxFileSize = 4 << 20

// GitLab finds the release of one environment: the newest successful deployment of the environment that a
// job created names that job (the `deploy:<env>` job of the generated pipeline, which carries the release as
// its artifact).
type GitLab struct {
	Client      *gitlab.Client
	Project     string // path ("group/project") or numeric ID
	Environment string
}

// Deployment is what the agent needs of a GitLab deployment.
type Deployment struct {
	ID, JobID, PipelineID int64
	SHA, Ref              string
	Tag                   bool
}

// ErrNoDeployment means the environment has no successful deployment yet: nothing to do.
var ErrNoDeployment = errors.New("the environment has no successful deployment")

// latestPages bounds how far back Latest looks past deployments that no job created (the agent's own
// records, report.KindDeployment: at most two per release) before it gives up.
const latestPages = 5

// Latest returns the newest successful deployment of the environment that a job created, newest by
// deployment ID: GitLab numbers a deployment when it creates the job, so the ID orders deployments by
// pipeline, not by when their jobs finished (an older pipeline's deploy job that finishes last does not
// win), and a re-run of an old deploy job is a new job with a new, higher ID (the documented rollback).
// Deployments created through the API (`deployable: null`, the agent's own records of what runs) are
// skipped.
func (g *GitLab) Latest(ctx context.Context) (*Deployment, error) {
	opt := &gitlab.ListProjectDeploymentsOptions{
		ListOptions: gitlab.ListOptions{PerPage: 20, Page: 1},
		Environment: gitlab.Ptr(g.Environment),
		Status:      gitlab.Ptr("success"),
		OrderBy:     gitlab.Ptr("id"),
		Sort:        gitlab.Ptr("desc"),
	}
	for range latestPages {
		ds, resp, err := g.Client.Deployments.ListProjectDeployments(g.Project, opt, gitlab.WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("gitlab: deployments of %s in %s: %w", g.Environment, g.Project, err)
		}
		for _, d := range ds {
			if d.Deployable.ID == 0 {
				continue // created through the API: a record, not a release
			}
			return &Deployment{ID: d.ID, JobID: d.Deployable.ID, PipelineID: d.Deployable.Pipeline.ID, SHA: d.SHA, Ref: d.Ref, Tag: d.Deployable.Tag}, nil
		}
		if resp == nil || resp.NextPage == 0 {
			break
		}
		opt.Page = resp.NextPage
	}
	return nil, fmt.Errorf("gitlab: %s in %s: %w", g.Environment, g.Project, ErrNoDeployment)
}

// Fetch downloads the release of deployment d into dir (which must exist and be empty): release.json and
// every compose file it lists, each through the job-artifacts API.
func (g *GitLab) Fetch(ctx context.Context, d *Deployment, dir string) (*Release, error) {
	b, err := g.file(ctx, d.JobID, "release/release.json")
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("deployment %d (job %d): %w", d.ID, d.JobID, err)
	}
	if m.Commit != "" && d.SHA != "" && m.Commit != d.SHA {
		return nil, fault.InvalidErr(fmt.Errorf("deployment %d is of commit %s but its release names %s", d.ID, d.SHA, m.Commit))
	}
	if err := os.WriteFile(filepath.Join(dir, "release.json"), b, 0o644); err != nil {
		return nil, err
	}
	for _, name := range m.StackNames() {
		for _, f := range m.Stacks[name].AllFiles() {
			content, err := g.file(ctx, d.JobID, "release/"+f)
			if err != nil {
				return nil, err
			}
			dst := filepath.Join(dir, filepath.FromSlash(f))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(dst, content, 0o644); err != nil {
				return nil, err
			}
		}
	}
	return &Release{Manifest: *m, Dir: dir, DeploymentID: d.ID, JobID: d.JobID, Ref: d.Ref, Tag: d.Tag}, nil
}

// file reads one file of a job's artifacts archive (GET /projects/:id/jobs/:job_id/artifacts/*artifact_path),
// streaming: a file over MaxFileSize is refused as it arrives, never buffered whole.
func (g *GitLab) file(ctx context.Context, job int64, p string) ([]byte, error) {
	req, err := g.Client.NewRequest(http.MethodGet, fmt.Sprintf("projects/%s/jobs/%d/artifacts/%s", gitlab.PathEscape(g.Project), job, p), nil,
		[]gitlab.RequestOptionFunc{gitlab.WithContext(ctx)})
	if err != nil {
		return nil, err
	}
	buf := &capped{max: MaxFileSize}
	resp, err := g.Client.Do(req, buf)
	switch {
	case errors.Is(err, errTooLarge):
		return nil, fault.InvalidErr(fmt.Errorf("gitlab: artifact %s of job %d is more than %d bytes", p, job, MaxFileSize))
	case err != nil && resp != nil && resp.StatusCode == http.StatusNotFound:
		return nil, fault.InvalidErr(fmt.Errorf("gitlab: job %d has no artifact file %s", job, p))
	case err != nil:
		return nil, fmt.Errorf("gitlab: artifact %s of job %d: %w", p, job, err)
	}
	return buf.b.Bytes(), nil
}

var errTooLarge = errors.New("too large")

// capped is a writer that refuses to hold more than max bytes.
type capped struct {
	b   bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if c.b.Len()+len(p) > c.max {
		return 0, errTooLarge
	}
	return c.b.Write(p)
}

// Deployment returns deployment id of the environment, when it is a successful deployment that a job
// created (GET /projects/:id/deployments/:deployment_id): a pinned release is fetched again by its
// deployment, and only GitLab says which job carries its release.
func (g *GitLab) Deployment(ctx context.Context, id int64) (*Deployment, error) {
	d, resp, err := g.Client.Deployments.GetProjectDeployment(g.Project, id, gitlab.WithContext(ctx))
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusNotFound {
			return nil, fault.InvalidErr(fmt.Errorf("gitlab: deployment %d of %s does not exist", id, g.Project))
		}
		return nil, fmt.Errorf("gitlab: deployment %d of %s: %w", id, g.Project, err)
	}
	switch {
	case d.Environment == nil || d.Environment.Name != g.Environment:
		return nil, fault.InvalidErr(fmt.Errorf("gitlab: deployment %d is not of environment %s", id, g.Environment))
	case d.Status != "success":
		return nil, fault.InvalidErr(fmt.Errorf("gitlab: deployment %d is %s, not success", id, d.Status))
	case d.Deployable.ID == 0:
		return nil, fault.InvalidErr(fmt.Errorf("gitlab: deployment %d was not made by a job: it carries no release", id))
	}
	return &Deployment{ID: d.ID, JobID: d.Deployable.ID, PipelineID: d.Deployable.Pipeline.ID, SHA: d.SHA, Ref: d.Ref, Tag: d.Deployable.Tag}, nil
}
