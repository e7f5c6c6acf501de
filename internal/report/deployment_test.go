package report

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func standIn(t *testing.T) (*testenv.GitLab, *GitLab) {
	t.Helper()
	gl := testenv.NewGitLab("glpat-agent", "sawmill/platform")
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	c, err := gitlab.NewClient("glpat-agent", gitlab.WithBaseURL(srv.URL+"/api/v4"), gitlab.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	return gl, &GitLab{Client: c, Project: "sawmill/platform"}
}

func statuses(gl *testenv.GitLab) string {
	var out []string
	for _, d := range gl.Deployments("production") {
		if d.Job == 0 {
			out = append(out, d.SHA[:1]+"="+d.Status)
		}
	}
	return strings.Join(out, " ")
}

// A rollout is one deployment: created running, then set to its outcome. A delivery repeated because its
// answer was lost tells GitLab nothing new; a rollout that was interrupted and superseded is canceled.
func TestDeploymentRecord(t *testing.T) {
	gl, g := standIn(t)
	ctx := context.Background()
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	// The pipeline's own deployment (a job's) is never touched: GitLab refuses to update it.
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "production", Status: "success", SHA: a}, nil)
	o := Outcome{Kind: KindDeployment, Environment: "production", Commit: a, Ref: "main"}
	for _, st := range []State{Running, Running, Success, Success} {
		o.State = st
		if err := g.Report(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if got := statuses(gl); got != "a=success" {
		t.Fatalf("records %q, want one success of a", got)
	}
	if d := gl.Deployments("production")[0]; d.Status != "success" || d.Job != 11 {
		t.Fatalf("the job's deployment changed: %+v", d)
	}
	// b starts and is interrupted; a is rolled out again (a rollback) and fails.
	if err := g.Report(ctx, Outcome{Kind: KindDeployment, Environment: "production", Commit: b, Ref: "main", State: Running}); err != nil {
		t.Fatal(err)
	}
	o.State = Running
	_ = g.Report(ctx, o)
	o.State = Failed
	if err := g.Report(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := statuses(gl); got != "a=success b=canceled a=failed" {
		t.Fatalf("records %q", got)
	}
	// Down: an error, so the outbox keeps it.
	gl.Outage.Store(true)
	if err := g.Report(ctx, o); err == nil {
		t.Fatal("GitLab down: no error")
	}
	// No ref: nothing can be recorded (GitLab requires it).
	gl.Outage.Store(false)
	if err := g.Report(ctx, Outcome{Kind: KindDeployment, Environment: "production", Commit: a, State: Success}); err == nil {
		t.Fatal("a record without a ref was accepted")
	}
}
