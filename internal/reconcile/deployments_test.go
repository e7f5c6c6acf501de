package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/report"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// refSource is fakeSource with the ref GitLab recorded for the release's deployment.
type refSource struct{ *fakeSource }

func (s refSource) Latest(ctx context.Context) (*source.Release, string, error) {
	rel, key, err := s.fakeSource.Latest(ctx)
	if rel != nil {
		rel.Ref = "main"
	}
	return rel, key, err
}

func sha(c byte) string { return strings.Repeat(string(c), 40) }

// records returns the agent's deployment records of staging (the ones no job created), oldest first, as
// "sha[:1]=status".
func records(gl *testenv.GitLab) []string {
	var out []string
	for _, d := range gl.Deployments("staging") {
		if d.Job == 0 {
			out = append(out, fmt.Sprintf("%s=%s", d.SHA[:1], d.Status))
		}
	}
	return out
}

// The environment shows what runs: the agent records each outcome as a deployment of the environment
// through GitLab's Deployments API (the test's GitLab is testenv's stand-in of it), through the outbox:
// a refused release is a failed deployment, a success is a success of its commit, and what GitLab could not
// take is delivered later, once.
func TestLoopRecordsDeployments(t *testing.T) {
	gl := testenv.NewGitLab("glpat-agent", "sawmill/platform")
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	c, err := gitlab.NewClient("glpat-agent", gitlab.WithBaseURL(srv.URL+"/api/v4"), gitlab.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state.json")
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	src := &fakeSource{commit: sha('a')}
	start := func() *Loop {
		l := &Loop{Environment: "staging", Source: refSource{src}, Flow: fx.flow, Reporter: &report.GitLab{Client: c, Project: "sawmill/platform"},
			StateFile: state, RecordDeployments: true, Metrics: &recorder{}}
		if err := l.Init(); err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := start()
	release := func(commit string) {
		src.mu.Lock()
		src.commit = commit
		src.mu.Unlock()
	}

	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success {
		t.Fatalf("cycle: %+v", rec)
	}
	l.Cycle(context.Background())
	if got := records(gl); strings.Join(got, " ") != "a=success" {
		t.Fatalf("deployments after a success: %v, want one success of commit a", got)
	}
	d := gl.Deployments("staging")[0]
	if d.Ref != "main" || d.Tag || d.SHA != sha('a') {
		t.Fatalf("deployment %+v: want ref main, commit a", d)
	}

	// A release the policies refuse: the environment shows a failed deployment of it.
	fx.eval.deny = true
	release(sha('b'))
	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Refused {
		t.Fatalf("cycle: %+v", rec)
	}
	if got := records(gl); strings.Join(got, " ") != "a=success b=failed" {
		t.Fatalf("deployments after a refusal: %v", got)
	}

	// GitLab is down while release c rolls out: nothing reaches it, the reports wait in the state file,
	// and survive a restart.
	fx.eval.deny = false
	release(sha('c'))
	gl.Outage.Store(true)
	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success || rec.ReportsPending != 3 {
		t.Fatalf("cycle during the outage: %+v, want success with 3 reports pending (running, status, deployment)", rec)
	}
	l = start()
	gl.Outage.Store(false)
	if rec := l.Cycle(context.Background()); rec.ReportsPending != 0 {
		t.Fatalf("after the outage: %+v", rec)
	}
	l.Cycle(context.Background())
	if got := records(gl); strings.Join(got, " ") != "a=success b=failed c=success" {
		t.Fatalf("deployments after the outage: %v, want c recorded once, as success", got)
	}

	// A release that cannot be read (an invalid release.json): a failed deployment of its commit.
	src.mu.Lock()
	src.err = &source.ReleaseError{Commit: sha('d'), Ref: "main", Err: fault.InvalidErr(errors.New("release.json: schema_version 9"))}
	src.mu.Unlock()
	if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Invalid {
		t.Fatalf("cycle: %+v", rec)
	}
	if got := records(gl); strings.Join(got, " ") != "a=success b=failed c=success d=failed" {
		t.Fatalf("deployments after an invalid release: %v", got)
	}
	var statuses []string
	for _, s := range gl.Statuses() {
		statuses = append(statuses, s.SHA[:1]+"="+s.State)
	}
	if strings.Join(statuses, " ") != "a=success b=failed c=success d=failed" {
		t.Fatalf("commit statuses %v", statuses)
	}
}
