package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/sabeiro/sawmill/internal/fault"
)

// fakeGitLab implements exactly the two documented endpoints the source calls:
//
//	GET /api/v4/projects/:id/deployments (docs.gitlab.com/api/deployments/#list-project-deployments)
//	GET /api/v4/projects/:id/jobs/:job_id/artifacts/*artifact_path
//	    (docs.gitlab.com/api/job_artifacts/#download-a-single-artifact-file-by-job-id)
//
// with PRIVATE-TOKEN authentication, offset pagination headers and GitLab's JSON error bodies.
type fakeGitLab struct {
	token       string
	project     string // path, e.g. sawmill/platform
	deployments []fakeDeployment
	artifacts   map[int64]map[string]string // job -> path -> content
	outage      atomic.Bool
	requests    atomic.Int64
}

type fakeDeployment struct {
	id, job, pipeline int64
	env, status, sha  string
	finished          time.Time
}

func (f *fakeGitLab) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	w.Header().Set("Content-Type", "application/json")
	if f.outage.Load() {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"message":"500 Internal Server Error"}`)
		return
	}
	if r.Header.Get("PRIVATE-TOKEN") != f.token {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"message":"401 Unauthorized"}`)
		return
	}
	prefix := "/api/v4/projects/" + url.PathEscape(f.project) + "/"
	p := r.URL.EscapedPath()
	if r.Method != http.MethodGet || !strings.HasPrefix(p, prefix) {
		notFound(w)
		return
	}
	rest := strings.TrimPrefix(p, prefix)
	switch {
	case rest == "deployments":
		f.listDeployments(w, r)
	case strings.HasPrefix(rest, "jobs/"):
		parts := strings.SplitN(strings.TrimPrefix(rest, "jobs/"), "/", 3)
		if len(parts) != 3 || parts[1] != "artifacts" {
			notFound(w)
			return
		}
		job, _ := strconv.ParseInt(parts[0], 10, 64)
		file, _ := url.PathUnescape(parts[2])
		content, ok := f.artifacts[job][file]
		if !ok {
			notFound(w)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		fmt.Fprint(w, content)
	default:
		notFound(w)
	}
}

func notFound(w http.ResponseWriter) {
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprint(w, `{"message":"404 Not Found"}`)
}

func (f *fakeGitLab) listDeployments(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var sel []fakeDeployment
	for _, d := range f.deployments {
		if (q.Get("environment") == "" || q.Get("environment") == d.env) && (q.Get("status") == "" || q.Get("status") == d.status) {
			sel = append(sel, d)
		}
	}
	if q.Get("order_by") != "finished_at" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"order_by does not have a valid value"}`)
		return
	}
	sort.Slice(sel, func(i, j int) bool {
		if q.Get("sort") == "desc" {
			return sel[i].finished.After(sel[j].finished)
		}
		return sel[i].finished.Before(sel[j].finished)
	})
	page, _ := strconv.Atoi(q.Get("page"))
	per, _ := strconv.Atoi(q.Get("per_page"))
	if page < 1 {
		page = 1
	}
	if per < 1 {
		per = 20
	}
	total := len(sel)
	pages := (total + per - 1) / per
	lo, hi := min((page-1)*per, total), min(page*per, total)
	w.Header().Set("X-Page", strconv.Itoa(page))
	w.Header().Set("X-Per-Page", strconv.Itoa(per))
	w.Header().Set("X-Total", strconv.Itoa(total))
	w.Header().Set("X-Total-Pages", strconv.Itoa(pages))
	if page < pages {
		w.Header().Set("X-Next-Page", strconv.Itoa(page+1))
	} else {
		w.Header().Set("X-Next-Page", "")
	}
	var out []map[string]any
	for _, d := range sel[lo:hi] {
		fin := d.finished.UTC().Format(time.RFC3339Nano)
		out = append(out, map[string]any{
			"id": d.id, "iid": d.id, "ref": "main", "sha": d.sha, "status": d.status,
			"created_at": fin, "updated_at": fin,
			"environment": map[string]any{"id": 1, "name": d.env, "external_url": nil},
			"deployable": map[string]any{
				"id": d.job, "status": d.status, "stage": "deploy", "name": "deploy:" + d.env, "ref": "main", "tag": false,
				"finished_at": fin,
				"pipeline":    map[string]any{"id": d.pipeline, "sha": d.sha, "ref": "main", "status": d.status},
			},
		})
	}
	if out == nil {
		out = []map[string]any{}
	}
	_ = json.NewEncoder(w).Encode(out)
}

const sha1 = "1111111111111111111111111111111111111111"
const sha2 = "2222222222222222222222222222222222222222"

func manifest(commit string, files ...string) string {
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

func newFake(t *testing.T) (*fakeGitLab, *GitLab) {
	t.Helper()
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	f := &fakeGitLab{token: "glpat-test", project: "sawmill/platform",
		deployments: []fakeDeployment{
			{id: 1, job: 101, pipeline: 7, env: "production", status: "success", sha: sha1, finished: now},
			{id: 2, job: 102, pipeline: 8, env: "production", status: "success", sha: sha2, finished: now.Add(time.Hour)},
			{id: 3, job: 103, pipeline: 9, env: "production", status: "failed", sha: sha2, finished: now.Add(2 * time.Hour)},
			{id: 4, job: 104, pipeline: 9, env: "staging", status: "success", sha: sha2, finished: now.Add(3 * time.Hour)},
		},
		artifacts: map[int64]map[string]string{
			102: {
				"release/release.json":                           manifest(sha2, "stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"),
				"release/stacks/platform/compose.yaml":            "services:\n  a:\n    image: x\n",
				"release/stacks/platform/compose.production.yaml": "services:\n  a:\n    deploy: {replicas: 3}\n",
			},
		},
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := gitlab.NewClient("glpat-test", gitlab.WithBaseURL(srv.URL+"/api/v4"), gitlab.WithoutRetries())
	if err != nil {
		t.Fatal(err)
	}
	return f, &GitLab{Client: c, Project: "sawmill/platform", Environment: "production"}
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
	f.outage.Store(true)
	_, err := g.Latest(context.Background())
	if err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("outage: %v", err)
	}
	if fault.KindOf(err) == fault.Invalid {
		t.Fatal("an outage is not invalid input: it must be retried, not reported as a bad release")
	}
	f.outage.Store(false)
	c, _ := gitlab.NewClient("wrong", gitlab.WithBaseURL(g.Client.BaseURL().String()), gitlab.WithoutRetries())
	g.Client = c
	if _, err := g.Latest(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestBadReleasesAreRefused(t *testing.T) {
	cases := map[string]string{
		"path escapes":    manifest(sha2, "../../etc/passwd"),
		"absolute path":   manifest(sha2, "/etc/passwd"),
		"unknown version": strings.Replace(manifest(sha2, "stacks/platform/compose.yaml"), `"schema_version":1`, `"schema_version":2`, 1),
		"unpinned ref":    strings.Replace(manifest(sha2, "stacks/platform/compose.yaml"), "@sha256:", ":sha256-", 1),
		"other commit":    manifest(sha1, "stacks/platform/compose.yaml"),
		"not json":        "{",
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			f, g := newFake(t)
			f.artifacts[102]["release/release.json"] = m
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
	delete(f.artifacts[102], "release/stacks/platform/compose.production.yaml")
	d, _ := g.Latest(context.Background())
	_, err := g.Fetch(context.Background(), d, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "compose.production.yaml") {
		t.Fatalf("err %v", err)
	}
}
