package main

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/cilint"
)

type gitRepo = testenv.GitRepo

func newGitRepo(t *testing.T, files map[string]string) *gitRepo { return testenv.NewGitRepo(t, files) }

const testConfig = `registry: registry.gitlab.com/sawmill/platform
default_branch: main
environments:
  - {name: staging, tier: staging, when: automatic}
  - {name: production, tier: production, when: manual, protected: true}
`

var testLayout = map[string]string{
	"pipegen.yaml":                            testConfig,
	"images/base/Dockerfile":                  "FROM alpine:3.22\n",
	"images/app/Dockerfile":                   "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n",
	"images/solo/Dockerfile":                  "FROM scratch\n",
	"stacks/platform/compose.yaml":            "services:\n  app:\n    image: ${REGISTRY}/app:latest\n",
	"stacks/platform/compose.production.yaml": "services:\n  app:\n    deploy: {replicas: 2}\n",
}

type result struct {
	code           int
	stdout, stderr string
}

func pipegen(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb, func(k string) string { return env[k] })
	return result{code, out.String(), errb.String()}
}

func jobs(t *testing.T, yml []byte) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(yml, &doc); err != nil {
		t.Fatalf("%v\n%s", err, yml)
	}
	return doc
}

func TestGenerateChangeDetection(t *testing.T) {
	r := newGitRepo(t, testLayout)
	first := r.Git("rev-parse", "HEAD")
	r.Write(map[string]string{"images/base/Dockerfile": "FROM alpine:3.23\n"})
	r.Commit("bump base")
	schema, err := cilint.Embedded()
	if err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "child.yml")
	res := pipegen(t, nil, "generate", "--repo", r.Dir, "--base", first, "-o", out)
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Validate(data); err != nil {
		t.Fatal(err)
	}
	doc := jobs(t, data)
	for _, j := range []string{"build:base", "build:app", "sign:base", "sign:app", "release", "deploy:staging", "deploy:production", "policy:platform"} {
		if _, ok := doc[j]; !ok {
			t.Errorf("missing job %s", j)
		}
	}
	if _, ok := doc["build:solo"]; ok {
		t.Error("solo did not change but is rebuilt")
	}

	// stdout equals the file byte for byte.
	res = pipegen(t, nil, "generate", "--repo", r.Dir, "--base", first)
	if res.code != 0 || res.stdout != string(data) {
		t.Errorf("stdout: exit %d, same output %v\n%s", res.code, res.stdout == string(data), res.stderr)
	}
	// A base of all zeros rebuilds everything.
	res = pipegen(t, map[string]string{"PIPEGEN_BASE": "0000000000000000000000000000000000000000"}, "generate", "--repo", r.Dir)
	if doc := jobs(t, []byte(res.stdout)); doc["build:solo"] == nil {
		t.Errorf("zero base: solo not rebuilt\n%s", res.stderr)
	}
}

func TestPlanTable(t *testing.T) {
	r := newGitRepo(t, testLayout)
	first := r.Git("rev-parse", "HEAD")
	r.Write(map[string]string{"images/base/x.txt": "1"})
	r.Commit("x")
	res := pipegen(t, nil, "plan", "--repo", r.Dir, "--base", first)
	want := "base: " + first + " (--base)\n" +
		"IMAGE  ACTION   WHY\n" +
		"base   rebuilt  changed images/base/x.txt\n" +
		"app    rebuilt  depends on base\n" +
		"solo   reused   unchanged\n"
	if res.code != 0 || res.stdout != want {
		t.Errorf("exit %d\n%s\nwant\n%s\n%s", res.code, res.stdout, want, res.stderr)
	}
}

func TestConfigLayers(t *testing.T) {
	r := newGitRepo(t, testLayout)
	// An empty registry: no channel record, everything is rebuilt.
	reg := testenv.Registry(t) + "/p"
	res := pipegen(t, map[string]string{"PIPEGEN_BUILDER": "buildkit", "PIPEGEN_SIGNING_MODE": "key", "PIPEGEN_REGISTRY": reg}, "generate", "--repo", r.Dir)
	if res.code != 0 {
		t.Fatal(res.stderr)
	}
	vars := jobs(t, []byte(res.stdout))["variables"].(map[string]any)
	if vars["SAWMILL_BUILDER"] != "buildkit" || vars["SAWMILL_SIGN_MODE"] != "key" || vars["SAWMILL_SIGN_KEY_VARIABLE"] != "COSIGN_PRIVATE_KEY" {
		t.Errorf("environment not applied: %v", vars)
	}
	res = pipegen(t, map[string]string{"PIPEGEN_BUILDER": "buildkit", "PIPEGEN_REGISTRY": reg}, "generate", "--repo", r.Dir, "--builder", "buildah")
	if vars := jobs(t, []byte(res.stdout))["variables"].(map[string]any); vars["SAWMILL_BUILDER"] != "buildah" {
		t.Errorf("flag does not win over the environment: %v", vars)
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  map[string]string
		args  []string
		want  string
		code  int
		nogit bool
	}{
		{name: "image without Dockerfile", edit: map[string]string{"images/empty/README.md": "x"}, want: "images/empty: image directory has no Dockerfile", code: 1},
		{name: "cycle", edit: map[string]string{"images/base/Dockerfile": "ARG APP_IMAGE\nFROM ${APP_IMAGE}\n"}, want: "dependency cycle: app -> base -> app", code: 1},
		{name: "unknown environment", edit: map[string]string{"stacks/platform/compose.qa.yaml": "services: {}\n"}, want: `stacks/platform/compose.qa.yaml: unknown environment "qa"`, code: 1},
		{name: "missing base", args: []string{"--base", "0123abc"}, want: `base "0123abc"`, code: 1},
		{name: "not git", nogit: true, want: "not a git repository", code: 1},
		{name: "unknown key", edit: map[string]string{"pipegen.yaml": testConfig + "registy: x\n"}, want: "registy", code: 1},
		{name: "unknown environment key", edit: map[string]string{"pipegen.yaml": testConfig + "  - {name: qa, tier: testing, approve: true}\n"}, want: "approve", code: 1},
		{name: "bad tier", edit: map[string]string{"pipegen.yaml": testConfig + "  - {name: qa, tier: test}\n"}, want: `environments[2].tier: "test" is not one of`, code: 1},
		{name: "no config", edit: map[string]string{"pipegen.yaml": ""}, want: "pipegen.yaml", code: 1},
		{name: "unknown flag", args: []string{"--frobnicate"}, want: "unknown flag: --frobnicate", code: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dir string
			if tc.nogit {
				dir = t.TempDir()
				(&gitRepo{T: t, Dir: dir}).Write(testLayout)
			} else {
				r := newGitRepo(t, testLayout)
				r.Write(tc.edit)
				if tc.name == "no config" {
					os.Remove(filepath.Join(r.Dir, "pipegen.yaml"))
				}
				r.Commit("edit")
				dir = r.Dir
			}
			out := filepath.Join(t.TempDir(), "child.yml")
			if err := os.WriteFile(out, []byte("previous"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"generate", "plan"} {
				args := append([]string{cmd, "--repo", dir}, tc.args...)
				if cmd == "generate" {
					args = append(args, "-o", out)
				}
				res := pipegen(t, nil, args...)
				if res.code != tc.code || !strings.Contains(res.stderr, tc.want) {
					t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", cmd, res.code, res.stderr, tc.code, tc.want)
				}
				if res.stdout != "" {
					t.Errorf("%s: wrote to stdout: %q", cmd, res.stdout)
				}
			}
			if b, _ := os.ReadFile(out); string(b) != "previous" {
				t.Error("the output file was touched")
			}
			entries, _ := os.ReadDir(filepath.Dir(out))
			if len(entries) != 1 {
				t.Errorf("stray files: %v", entries)
			}
		})
	}
}

func TestInit(t *testing.T) {
	dir := t.TempDir()
	res := pipegen(t, map[string]string{"CI_REGISTRY_IMAGE": "registry.gitlab.com/g/p"}, "init", "--repo", dir)
	if res.code != 0 {
		t.Fatal(res.stderr)
	}
	for _, f := range []string{"pipelines/build.yml", "pipelines/deploy.yml", "pipegen.yaml", ".gitlab-ci.yml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, "pipegen.yaml"))
	if !strings.Contains(string(cfg), "registry: registry.gitlab.com/g/p\n") || !strings.Contains(string(cfg), "  mode: keyless\n") ||
		!strings.Contains(string(cfg), "  image: "+ToolImageRepository+":") {
		t.Errorf("pipegen.yaml:\n%s", cfg)
	}
	// The parent pipeline runs generate in the tools image (pipegen, agent, git), and has
	// workflow rules: merge request pipelines, or branch pipelines when no MR is open, and tags.
	parent := jobs(t, mustRead(t, filepath.Join(dir, ".gitlab-ci.yml")))
	if img, _ := parent["generate"].(map[string]any)["image"].(string); !strings.HasPrefix(img, ToolImageRepository+":") {
		t.Errorf("generate image %q", img)
	}
	rules := parent["workflow"].(map[string]any)["rules"].([]any)
	if len(rules) != 4 || rules[1].(map[string]any)["when"] != "never" || !strings.Contains(rules[1].(map[string]any)["if"].(string), "$CI_OPEN_MERGE_REQUESTS") {
		t.Errorf("workflow rules %v", rules)
	}
	// A self-managed instance gets key signing.
	dir2 := t.TempDir()
	if res := pipegen(t, map[string]string{"CI_SERVER_URL": "https://gitlab.example.com"}, "init", "--repo", dir2); res.code != 0 {
		t.Fatal(res.stderr)
	}
	if b := mustRead(t, filepath.Join(dir2, "pipegen.yaml")); !strings.Contains(string(b), "  mode: key\n") {
		t.Errorf("self-managed pipegen.yaml:\n%s", b)
	}
	// Existing files are kept unless --force.
	custom := filepath.Join(dir, "pipelines", "build.yml")
	os.WriteFile(custom, []byte("# mine\n"), 0o644)
	pipegen(t, nil, "init", "--repo", dir)
	if b, _ := os.ReadFile(custom); string(b) != "# mine\n" {
		t.Error("init overwrote an existing file")
	}
	pipegen(t, nil, "init", "--repo", dir, "--force")
	if b, _ := os.ReadFile(custom); string(b) == "# mine\n" {
		t.Error("init --force kept the file")
	}
	// The initialized repository generates and lints.
	r := &gitRepo{T: t, Dir: dir}
	r.Git("init", "-q", "-b", "main")
	r.Write(map[string]string{"images/a/Dockerfile": "FROM scratch\n"})
	r.Commit("init")
	out := filepath.Join(dir, "child.yml")
	if res := pipegen(t, nil, "generate", "--repo", dir, "--registry", testenv.Registry(t)+"/g/p", "-o", out); res.code != 0 {
		t.Fatal(res.stderr)
	}
	for _, f := range []string{out, filepath.Join(dir, ".gitlab-ci.yml")} {
		if res := pipegen(t, nil, "lint", f); res.code != 0 {
			t.Errorf("lint %s: %d %s", f, res.code, res.stderr)
		}
	}
	if res := pipegen(t, nil, "init", "--repo", filepath.Join(dir, "nope")); res.code != 1 || !strings.Contains(res.stderr, "nope") {
		t.Errorf("missing dir: %+v", res)
	}
}

// fakeGitLab implements GitLab's CI Lint endpoint, POST /api/v4/projects/:id/ci/lint
// (https://docs.gitlab.com/api/lint/): PRIVATE-TOKEN authentication, a JSON body with
// content (required), dry_run, include_jobs, ref; 200 with {valid, errors, warnings,
// merged_yaml, includes}; 401 {"message": "401 Unauthorized"}; 404 {"message": "404 Project
// Not Found"}; 400 {"error": "content is missing"}. It calls a configuration invalid when
// it does not parse or when a visible job has none of script, run, trigger, extends, with
// GitLab's message.
func fakeGitLab(t *testing.T, token, project string, seen *[]map[string]any) *httptest.Server {
	t.Helper()
	writeJSON := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := "/api/v4/projects/" + url.PathEscape(project) + "/ci/lint"
		if r.Method != http.MethodPost || r.URL.EscapedPath() != want {
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "404 Project Not Found"})
			return
		}
		if r.Header.Get("PRIVATE-TOKEN") != token {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "401 Unauthorized"})
			return
		}
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "content is invalid"})
			return
		}
		*seen = append(*seen, body)
		content, ok := body["content"].(string)
		if !ok || content == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "content is missing"})
			return
		}
		var doc map[string]any
		var errs []string
		if err := yaml.Unmarshal([]byte(content), &doc); err != nil {
			errs = append(errs, "Invalid configuration format")
		}
		keywords := map[string]bool{"stages": true, "variables": true, "include": true, "default": true, "workflow": true, "image": true, "services": true, "cache": true, "before_script": true, "after_script": true, "spec": true}
		for name, v := range doc {
			job, isMap := v.(map[string]any)
			if keywords[name] || strings.HasPrefix(name, ".") || !isMap {
				continue
			}
			if job["script"] == nil && job["run"] == nil && job["trigger"] == nil && job["extends"] == nil {
				errs = append(errs, "jobs:"+name+" config should implement the script:, run:, or trigger: keyword")
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"valid": len(errs) == 0, "errors": append([]string{}, errs...), "warnings": []string{}, "merged_yaml": content, "includes": []any{}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestLint(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yml")
	os.WriteFile(good, []byte("build:\n  script: [make]\n"), 0o644)
	schemaBad := filepath.Join(dir, "schema-bad.yml")
	os.WriteFile(schemaBad, []byte("build:\n  script: [make]\n  when: sometimes\n"), 0o644)
	apiBad := filepath.Join(dir, "api-bad.yml")
	os.WriteFile(apiBad, []byte("build:\n  stage: test\n"), 0o644) // valid for the schema, not for GitLab

	if res := pipegen(t, nil, "lint", good); res.code != 0 {
		t.Errorf("good: %+v", res)
	}
	if res := pipegen(t, nil, "lint", schemaBad); res.code != 3 || !strings.Contains(res.stderr, "/build/when") {
		t.Errorf("schema-bad: %+v", res)
	}
	if res := pipegen(t, nil, "lint", filepath.Join(dir, "missing.yml")); res.code != 1 {
		t.Errorf("missing: %+v", res)
	}

	const token = "glpat-secret-value-1234"
	var seen []map[string]any
	srv := fakeGitLab(t, token, "sawmill/platform", &seen)
	env := map[string]string{"PIPEGEN_GITLAB_TOKEN": token}
	res := pipegen(t, env, "lint", good, "--gitlab-url", srv.URL, "--project", "sawmill/platform")
	if res.code != 0 || !strings.Contains(res.stdout, "valid (GitLab CI Lint API, project sawmill/platform)") {
		t.Errorf("API good: %+v", res)
	}
	if len(seen) != 1 || seen[0]["content"] != "build:\n  script: [make]\n" {
		t.Errorf("request bodies: %v", seen)
	}
	res = pipegen(t, env, "lint", apiBad, "--gitlab-url", srv.URL, "--project", "sawmill/platform", "--ref", "main")
	if res.code != 3 || !strings.Contains(res.stderr, "jobs:build config should implement the script:, run:, or trigger: keyword") {
		t.Errorf("API bad: %+v", res)
	}
	if last := seen[len(seen)-1]; last["dry_run"] != true || last["ref"] != "main" {
		t.Errorf("dry run request: %v", last)
	}
	// From CI variables; a wrong token is a failure (exit 1), and no token is ever printed.
	res = pipegen(t, map[string]string{"GITLAB_TOKEN": "wrong-token-5678", "CI_SERVER_URL": srv.URL, "CI_PROJECT_ID": "sawmill/platform"}, "lint", good)
	if res.code != 1 || !strings.Contains(res.stderr, "401") {
		t.Errorf("wrong token: %+v", res)
	}
	res2 := pipegen(t, env, "lint", good, "--gitlab-url", srv.URL, "--project", "other/project")
	if res2.code != 1 || !strings.Contains(res2.stderr, "404") {
		t.Errorf("unknown project: %+v", res2)
	}
	for _, r := range []result{res, res2} {
		if strings.Contains(r.stdout+r.stderr, token) || strings.Contains(r.stdout+r.stderr, "wrong-token-5678") {
			t.Error("a token was printed")
		}
	}
	if res := pipegen(t, nil, "lint", good, "--gitlab-url", srv.URL, "--project", "sawmill/platform"); res.code != 2 || !strings.Contains(res.stderr, "missing: token") {
		t.Errorf("no token: %+v", res)
	}
	if res := pipegen(t, nil, "lint", good, "--token", token); res.code != 2 {
		t.Errorf("--token must not exist: %+v", res)
	}
}

func TestReleaseCommand(t *testing.T) {
	r := newGitRepo(t, testLayout)
	out := filepath.Join(t.TempDir(), "release")
	digest := "sha256:" + strings.Repeat("ab", 32)
	env := map[string]string{
		"SAWMILL_REBUILT": "base app solo", "BASE_DIGEST": digest, "APP_DIGEST": digest, "SOLO_DIGEST": digest,
		"CI_COMMIT_SHA": "c0ffee", "CI_COMMIT_REF_NAME": "main", "CI_PIPELINE_ID": "7", "CI_PROJECT_PATH": "sawmill/platform",
	}
	res := pipegen(t, env, "release", "--repo", r.Dir, "--out", out)
	if res.code != 0 {
		t.Fatalf("%+v", res)
	}
	raw, err := os.ReadFile(filepath.Join(out, "release.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rel struct {
		Images map[string]struct{ Ref string }
	}
	json.Unmarshal(raw, &rel)
	if rel.Images["app"].Ref != "registry.gitlab.com/sawmill/platform/app:c0ffee@"+digest {
		t.Errorf("release.json:\n%s", raw)
	}
	compose, _ := os.ReadFile(filepath.Join(out, "stacks/platform/compose.yaml"))
	if !strings.Contains(string(compose), "image: registry.gitlab.com/sawmill/platform/app:c0ffee@"+digest) {
		t.Errorf("compose:\n%s", compose)
	}
	// A missing digest names the variable's image and writes nothing.
	delete(env, "SOLO_DIGEST")
	out2 := filepath.Join(t.TempDir(), "release")
	res = pipegen(t, env, "release", "--repo", r.Dir, "--out", out2)
	if res.code != 1 || !strings.Contains(res.stderr, "image solo was rebuilt but its digest") {
		t.Errorf("%+v", res)
	}
	if _, err := os.Stat(out2); err == nil {
		t.Error("release directory written on failure")
	}
	if res := pipegen(t, env, "release", "--repo", r.Dir, "--rebuilt", "ghost"); res.code != 1 || !strings.Contains(res.stderr, `image "ghost"`) {
		t.Errorf("%+v", res)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// This repository's own pipeline is valid and runs its tests.
func TestRepositoryPipeline(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(root, ".gitlab-ci.yml")
	if res := pipegen(t, nil, "lint", file); res.code != 0 {
		t.Fatalf("lint: %+v", res)
	}
	doc := jobs(t, mustRead(t, file))
	test, _ := doc["test"].(map[string]any)
	if script, _ := test["script"].([]any); len(script) == 0 || script[0] != "bash .ci/run" {
		t.Errorf("the pipeline does not run the tests: %v", test)
	}
	if _, err := os.Stat(filepath.Join(root, ".ci", "run")); err != nil {
		t.Error(err)
	}
}

// The tools image named by init is the one of the commit pipegen was built from.
func TestDefaultToolImage(t *testing.T) {
	defer func(c string) { toolCommit = c }(toolCommit)
	toolCommit = strings.Repeat("ab", 20)
	if got := defaultToolImage(); got != ToolImageRepository+":"+toolCommit {
		t.Errorf("defaultToolImage() = %s", got)
	}
	toolCommit = ""
	if got := defaultToolImage(); !strings.HasPrefix(got, ToolImageRepository+":") {
		t.Errorf("defaultToolImage() = %s", got)
	}
}
