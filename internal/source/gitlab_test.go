package source

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

const sha1 = "1111111111111111111111111111111111111111"
const sha2 = "2222222222222222222222222222222222222222"

func releaseJSON(commit string, files ...string) string {
	m := map[string]any{
		"schema_version": 1, "project": "sawmill/platform", "commit": commit, "ref": "main",
		"pipeline": map[string]any{"id": 7, "url": "https://gitlab.example/p/7"},
		"registry": "registry.example/sawmill", "channel": "release-main",
		"images": map[string]any{"go_ingest": map[string]any{
			"repository": "registry.example/sawmill/go_ingest", "tag": commit,
			"digest": "sha256:" + strings.Repeat("a", 64), "rebuilt": true,
			"ref": "registry.example/sawmill/go_ingest:" + commit + "@sha256:" + strings.Repeat("a", 64),
		}},
		"stacks": map[string]any{"platform": map[string]any{
			"files":        files,
			"environments": map[string]any{"staging": files[:1], "production": files},
		}},
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func newFake(t *testing.T) (*testenv.GitLab, *GitLab) {
	t.Helper()
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	f := testenv.NewGitLab("glpat-test", "sawmill/platform")
	f.AddDeployment(testenv.Deployment{ID: 1, Job: 101, Pipeline: 7, Environment: "production", Status: "success", SHA: sha1, Finished: now}, nil)
	f.AddDeployment(testenv.Deployment{ID: 2, Job: 102, Pipeline: 8, Environment: "production", Status: "success", SHA: sha2, Finished: now.Add(time.Hour)}, map[string]string{
		"release/release.json":                            releaseJSON(sha2, "stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"),
		"release/stacks/platform/compose.yaml":            "services:\n  a:\n    image: x\n",
		"release/stacks/platform/compose.production.yaml": "services:\n  a:\n    deploy: {replicas: 3}\n",
	})
	f.AddDeployment(testenv.Deployment{ID: 3, Job: 103, Pipeline: 9, Environment: "production", Status: "failed", SHA: sha2, Finished: now.Add(2 * time.Hour)}, nil)
	f.AddDeployment(testenv.Deployment{ID: 4, Job: 104, Pipeline: 9, Environment: "staging", Status: "success", SHA: sha2, Finished: now.Add(3 * time.Hour)}, nil)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := gitlab.NewClient("glpat-test", gitlab.WithBaseURL(srv.URL+"/api/v4"), gitlab.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	return f, &GitLab{Client: c, Project: "sawmill/platform", Environment: "production"}
}

// setArtifact replaces one artifact file of job 102.
func setArtifact(f *testenv.GitLab, path, content string) {
	files := map[string]string{
		"release/release.json":                            releaseJSON(sha2, "stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"),
		"release/stacks/platform/compose.yaml":            "services:\n  a:\n    image: x\n",
		"release/stacks/platform/compose.production.yaml": "services:\n  a:\n    deploy: {replicas: 3}\n",
	}
	if content == "" {
		delete(files, path)
	} else {
		files[path] = content
	}
	f.AddDeployment(testenv.Deployment{ID: 5, Job: 105, Pipeline: 10, Environment: "production", Status: "success", SHA: sha2, Finished: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)}, files)
}

func TestLatestSuccessfulDeploymentAndItsRelease(t *testing.T) {
	_, g := newFake(t)
	ctx := context.Background()
	d, err := g.Latest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != 2 || d.JobID != 102 || d.SHA != sha2 {
		t.Fatalf("latest %+v: want deployment 2 (newest successful production one)", d)
	}
	dir := t.TempDir()
	rel, err := g.Fetch(ctx, d, dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := rel.Files("platform", "production")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("files %v", files)
	}
	b, err := os.ReadFile(files[1])
	if err != nil || !strings.Contains(string(b), "replicas: 3") {
		t.Fatalf("override not fetched: %q %v", b, err)
	}
	if staging, _ := rel.Files("platform", "staging"); len(staging) != 1 {
		t.Fatalf("staging files %v", staging)
	}
	if _, err := rel.Files("platform", "qa"); fault.KindOf(err) != fault.Invalid {
		t.Fatalf("unknown environment: %v", err)
	}
}

func TestNoDeployment(t *testing.T) {
	_, g := newFake(t)
	g.Environment = "qa"
	if _, err := g.Latest(context.Background()); !errors.Is(err, ErrNoDeployment) {
		t.Fatalf("err %v", err)
	}
}

func TestOutageAndAuthAreErrorsNotReleases(t *testing.T) {
	f, g := newFake(t)
	f.Outage.Store(true)
	_, err := g.Latest(context.Background())
	if err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("outage: %v", err)
	}
	if fault.KindOf(err) == fault.Invalid {
		t.Fatal("an outage is not invalid input: it must be retried, not reported as a bad release")
	}
	f.Outage.Store(false)
	c, _ := gitlab.NewClient("wrong", gitlab.WithBaseURL(g.Client.BaseURL().String()), gitlab.WithoutRetries())
	g.Client = c
	if _, err := g.Latest(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestBadReleasesAreRefused(t *testing.T) {
	cases := map[string]string{
		"path escapes":    releaseJSON(sha2, "../../etc/passwd"),
		"absolute path":   releaseJSON(sha2, "/etc/passwd"),
		"unknown version": strings.Replace(releaseJSON(sha2, "stacks/platform/compose.yaml"), `"schema_version":1`, `"schema_version":2`, 1),
		"unpinned ref":    strings.Replace(releaseJSON(sha2, "stacks/platform/compose.yaml"), "@sha256:", ":sha256-", 1),
		"other commit":    releaseJSON(sha1, "stacks/platform/compose.yaml"),
		"not json":        "{",
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			f, g := newFake(t)
			setArtifact(f, "release/release.json", m)
			d, err := g.Latest(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if _, err := g.Fetch(context.Background(), d, dir); fault.KindOf(err) != fault.Invalid {
				t.Fatalf("accepted or wrong class: %v", err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("a refused release wrote %v", entries)
			}
			if _, err := os.Stat(filepath.Join(dir, "..", "..", "etc", "passwd")); err == nil {
				t.Fatal("wrote outside the release directory")
			}
		})
	}
}

func TestMissingArtifact(t *testing.T) {
	f, g := newFake(t)
	setArtifact(f, "release/stacks/platform/compose.production.yaml", "")
	d, _ := g.Latest(context.Background())
	_, err := g.Fetch(context.Background(), d, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "compose.production.yaml") {
		t.Fatalf("err %v", err)
	}
}

// A release directory (source dir, and the git source's checkout) reads nothing outside itself.
func TestDirRefusesLinksOutOfTheRelease(t *testing.T) {
	for name, target := range map[string]string{"absolute": "/etc/passwd", "relative": "../../../../etc/hostname", "dangling": "nowhere"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "stacks/platform"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "release.json"), []byte(releaseJSON(sha1, "stacks/platform/compose.yaml")), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, "stacks/platform/compose.yaml")); err != nil {
				t.Fatal(err)
			}
			_, err := Dir(dir)
			if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "stacks/platform/compose.yaml") {
				t.Fatalf("Dir: %v, want an invalid-input error naming the link", err)
			}
		})
	}
	// A link inside the release is fine.
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "stacks/platform"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(filepath.Join(dir, "release.json"), []byte(releaseJSON(sha1, "stacks/platform/compose.yaml")), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "stacks/platform/base.yaml"), []byte("services: {}\n"), 0o644)
	_ = os.Symlink("base.yaml", filepath.Join(dir, "stacks/platform/compose.yaml"))
	if _, err := Dir(dir); err != nil {
		t.Fatalf("a link inside the release: %v", err)
	}
}

// An artifact file over the limit is refused as it arrives (never buffered whole).
func TestOversizedArtifact(t *testing.T) {
	f, g := newFake(t)
	setArtifact(f, "release/stacks/platform/compose.production.yaml", strings.Repeat("#", MaxFileSize+1))
	d, err := g.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.Fetch(context.Background(), d, t.TempDir())
	if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("Fetch: %v, want an invalid-input error about the size", err)
	}
}

// The newest pipeline wins, not the deploy job that finished last: GitLab numbers deployments when it
// creates the deploy job, so an older pipeline's job that finishes later has the lower ID. A re-run of an
// old deploy job is a new deployment with the highest ID (the documented rollback), and the agent's own
// records (created through the API, no job) are never taken for a release.
func TestLatestIsTheNewestPipelineNotTheLastToFinish(t *testing.T) {
	f, g := newFake(t)
	ctx := context.Background()
	late := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	// Pipeline 20 (deployment 10) and the older pipeline 19 (deployment 9), whose deploy job finished last.
	f.AddDeployment(testenv.Deployment{ID: 9, Job: 109, Pipeline: 19, Environment: "production", Status: "success", SHA: sha1, Finished: late.Add(time.Hour)}, nil)
	f.AddDeployment(testenv.Deployment{ID: 10, Job: 110, Pipeline: 20, Environment: "production", Status: "success", SHA: sha2, Finished: late}, nil)
	// The agent's record of what runs: newer, no job.
	f.AddDeployment(testenv.Deployment{ID: 11, Environment: "production", Status: "success", SHA: sha2, Finished: late.Add(2 * time.Hour)}, nil)
	d, err := g.Latest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != 10 || d.PipelineID != 20 {
		t.Fatalf("latest is deployment %d of pipeline %d; want 10 of pipeline 20 (the newest pipeline), not the job that finished last", d.ID, d.PipelineID)
	}
	// An operator re-runs pipeline 19's deploy job: a new job, a new deployment, the rollback.
	f.AddDeployment(testenv.Deployment{ID: 12, Job: 112, Pipeline: 19, Environment: "production", Status: "success", SHA: sha1, Finished: late.Add(3 * time.Hour)}, nil)
	if d, err = g.Latest(ctx); err != nil || d.ID != 12 || d.SHA != sha1 {
		t.Fatalf("after the re-run: latest %+v, %v; want the re-run's deployment 12 of %s", d, err, sha1)
	}
}

// Only records of the agent (no job) in the environment: no release.
func TestLatestSkipsRecordsOfTheAgent(t *testing.T) {
	f, g := newFake(t)
	g.Environment = "qa"
	for i := range int64(45) {
		f.AddDeployment(testenv.Deployment{ID: 100 + i, Environment: "qa", Status: "success", SHA: sha1}, nil)
	}
	if _, err := g.Latest(context.Background()); !errors.Is(err, ErrNoDeployment) {
		t.Fatalf("err %v; want ErrNoDeployment", err)
	}
}
