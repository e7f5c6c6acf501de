package main

import (
	"context"
	"encoding/json"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// gitlabCILocal finds gitlab-ci-local in PATH or in <module root>/.tools (make tools). When it
// is missing the test fails under CI=true and is skipped otherwise.
func gitlabCILocal(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("gitlab-ci-local"); err == nil {
		return p
	}
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".tools", "node_modules", ".bin", "gitlab-ci-local")
			if _, err := os.Stat(p); err == nil {
				return p
			}
			break
		}
		if filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("gitlab-ci-local not found in PATH or .tools/ (run make tools)")
	}
	t.Skip("gitlab-ci-local not found in PATH or .tools/ (run make tools)")
	return ""
}

// fixtureTemplates replace pipelines/*.yml with harmless shell commands that follow the same
// contracts as the real templates (dotenv digests, release/ artifact) and append one line per
// job to log.
func fixtureTemplates(log, out string) map[string]string {
	return map[string]string{
		"pipelines/build.yml": `.sawmill-build:
  script:
    - 'args=$(eval "printf ''%s'' \"$SAWMILL_BUILD_ARGS\"" | tr "\n" " ")'
    - echo "build:$SAWMILL_IMAGE args=$args" >> ` + log + `
    - digest="sha256:$(printf '%s' "$SAWMILL_IMAGE-$CI_COMMIT_SHA" | sha256sum | cut -d' ' -f1)"
    - echo "${SAWMILL_DIGEST_VAR}=${digest}" > "$SAWMILL_DOTENV"
`,
		"pipelines/scan.yml": `.sawmill-scan:
  script:
    - eval "digest=\${$SAWMILL_DIGEST_VAR}"
    - echo "scan:$SAWMILL_IMAGE digest=$digest" >> ` + log + `
`,
		"pipelines/sign.yml": `.sawmill-sign:
  script:
    - eval "digest=\${$SAWMILL_DIGEST_VAR}"
    - 'case "$digest" in sha256:*) ;; *) exit 1 ;; esac'
    - echo "sign:$SAWMILL_IMAGE digest=$digest format=$SAWMILL_SIGN_FORMAT token=${SIGSTORE_ID_TOKEN:+set}" >> ` + log + `
    - echo "${SAWMILL_DIGEST_VAR}=${digest}" > "$SAWMILL_DOTENV"
`,
		"pipelines/test.yml": `.sawmill-sast:
  script:
    - echo "sast" >> ` + log + `
.sawmill-policy:
  script:
    - echo "policy:$SAWMILL_STACK envs=$SAWMILL_ENVIRONMENTS" >> ` + log + `
`,
		"pipelines/release.yml": `.sawmill-release:
  script:
    - echo "release rebuilt=$SAWMILL_REBUILT reused=$SAWMILL_REUSED BASE_DIGEST=$BASE_DIGEST APP_DIGEST=$APP_DIGEST SOLO_DIGEST=$SOLO_DIGEST" >> ` + log + `
    - $PIPEGEN release --out release
    - rm -rf ` + out + ` && cp -r release ` + out + `
  artifacts:
    paths:
      - release/
`,
		"pipelines/deploy.yml": `.sawmill-deploy:
  script:
    - test -f release/release.json
    - echo "deploy:$SAWMILL_ENVIRONMENT" >> ` + log + `
`,
	}
}

type logLine struct{ job, rest string }

func readLog(t *testing.T, path string) []logLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("job log: %v", err)
	}
	var out []logLine
	for l := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		job, rest, _ := strings.Cut(l, " ")
		out = append(out, logLine{job, rest})
	}
	return out
}

func TestEndToEndGitLabCILocal(t *testing.T) {
	gcl := gitlabCILocal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	bin := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, "pipegen"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// A real registry (in process) holding the last release of the default branch.
	reg := testenv.Registry(t) + "/sawmill/platform"

	work := t.TempDir()
	logFile, outDir := filepath.Join(work, "jobs.log"), filepath.Join(work, "release")
	r := &gitRepo{T: t, Dir: filepath.Join(work, "repo")}
	os.MkdirAll(r.Dir, 0o755)
	r.Git("init", "-q", "-b", "main")
	r.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	if res := pipegen(t, nil, "init", "--repo", r.Dir, "--registry", reg); res.code != 0 {
		t.Fatal(res.stderr)
	}
	r.Write(fixtureTemplates(logFile, outDir))
	r.Write(map[string]string{
		"images/base/Dockerfile":                  "FROM alpine:3.22\n",
		"images/app/Dockerfile":                   "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n",
		"images/solo/Dockerfile":                  "FROM scratch\n",
		"stacks/platform/compose.yaml":            "services:\n  app:\n    image: ${REGISTRY}/app:latest\n  solo:\n    image: ${REGISTRY}/solo:latest\n  db:\n    image: postgres:16\n",
		"stacks/platform/compose.production.yaml": "services:\n  app:\n    deploy: {replicas: 2}\n",
		".gitignore":                              ".gitlab-ci-local/\n",
	})
	first := r.Commit("initial")

	gitlabCI := func(extra ...string) string {
		t.Helper()
		os.Remove(logFile)
		args := append([]string{"--force-shell-executor", "--no-color"}, extra...)
		cmd := exec.CommandContext(ctx, gcl, args...)
		cmd.Dir = r.Dir
		cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("gitlab-ci-local: %v\n%s", err, out)
		}
		// gitlab-ci-local 4.62.0 passes a trigger job with strategy: depend even when its
		// child pipeline failed: look for failed jobs in the output.
		if strings.Contains(string(out), " FAIL ") {
			t.Fatalf("a job failed:\n%s", out)
		}
		return string(out)
	}

	// Run 1: the first pipeline rebuilds everything.
	output := gitlabCI()
	lines := readLog(t, logFile)
	var ran []string
	at := map[string]int{}
	for i, l := range lines {
		ran = append(ran, l.job)
		at[l.job] = i
	}
	want := []string{"build:base", "build:app", "build:solo", "scan:base", "scan:app", "scan:solo", "sign:base", "sign:app", "sign:solo", "sast", "policy:platform", "release", "deploy:staging"}
	got := slices.Sorted(slices.Values(ran))
	if !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Fatalf("jobs that ran: %v\nwant %v\n%s", ran, want, output)
	}
	for _, before := range [][2]string{
		{"build:base", "build:app"}, {"build:base", "scan:base"}, {"scan:base", "sign:base"}, {"build:app", "sign:app"},
		{"scan:app", "sign:app"}, {"sign:base", "release"}, {"sign:app", "release"}, {"sign:solo", "release"},
		{"policy:platform", "release"}, {"release", "deploy:staging"},
	} {
		if at[before[0]] > at[before[1]] {
			t.Errorf("%s ran after %s: %v", before[0], before[1], ran)
		}
	}
	field := func(job, key string) string {
		for _, l := range lines {
			if l.job == job {
				for f := range strings.FieldsSeq(l.rest) {
					if v, ok := strings.CutPrefix(f, key+"="); ok {
						return v
					}
				}
			}
		}
		return ""
	}
	digests := map[string]string{}
	for _, img := range []string{"base", "app", "solo"} {
		d := field("sign:"+img, "digest")
		if !strings.HasPrefix(d, "sha256:") || d != field("scan:"+img, "digest") {
			t.Errorf("sign:%s saw digest %q, scan saw %q", img, d, field("scan:"+img, "digest"))
		}
		if got := field("release", strings.ToUpper(img)+"_DIGEST"); got != d {
			t.Errorf("release saw %s_DIGEST=%q, sign exported %q", strings.ToUpper(img), got, d)
		}
		digests[img] = d
	}
	// gitlab-ci-local mints no OIDC id_tokens, so SIGSTORE_ID_TOKEN is not checked here.
	if field("sign:app", "format") != "bundle" {
		t.Errorf("sign job: %v", lines)
	}
	// The dependent build got its base's digest from the base build's dotenv report.
	if got := field("build:app", "BASE_IMAGE"); got != reg+"/base@"+digests["base"] {
		t.Errorf("build:app BASE_IMAGE=%q, want %s", got, reg+"/base@"+digests["base"])
	}
	rel := readRelease(t, outDir)
	if rel.Commit != first || rel.Ref != "main" {
		t.Errorf("release commit %s ref %s, want %s main", rel.Commit, rel.Ref, first)
	}
	for img, d := range digests {
		if got := rel.Images[img]; got.Digest != d || !got.Rebuilt || got.Ref != reg+"/"+img+":"+first+"@"+d {
			t.Errorf("release image %s = %+v", img, got)
		}
	}
	compose, _ := os.ReadFile(filepath.Join(outDir, "stacks/platform/compose.yaml"))
	if !strings.Contains(string(compose), "image: "+rel.Images["app"].Ref) || !strings.Contains(string(compose), "image: postgres:16") {
		t.Errorf("pinned compose:\n%s", compose)
	}

	// Run 2: only app changed since the last release. base and solo are reused: the release
	// resolves them from the registry's release-main tags (what the previous release job
	// published; pushed here directly).
	releasedBase := testenv.PushRandom(t, reg+"/base:release-main")
	releasedSolo := testenv.PushRandom(t, reg+"/solo:release-main")
	r.Write(map[string]string{"images/app/main.txt": "v2\n"})
	second := r.Commit("change app")
	output = gitlabCI("--variable", "CI_COMMIT_BEFORE_SHA="+first)
	lines = readLog(t, logFile)
	ran = nil
	for _, l := range lines {
		ran = append(ran, l.job)
	}
	want = []string{"build:app", "deploy:staging", "policy:platform", "release", "sast", "scan:app", "sign:app"}
	if got := slices.Sorted(slices.Values(ran)); !slices.Equal(got, want) {
		t.Fatalf("run 2 jobs: %v\nwant %v\n%s", got, want, output)
	}
	if got := field("build:app", "BASE_IMAGE"); got != reg+"/base:release-main" {
		t.Errorf("run 2: build:app BASE_IMAGE=%q, want the released base", got)
	}
	if field("release", "rebuilt") != "app" || field("release", "reused") != "base" {
		t.Errorf("run 2 release: %v", lines)
	}
	rel = readRelease(t, outDir)
	if rel.Commit != second || !rel.Images["app"].Rebuilt || rel.Images["base"].Rebuilt ||
		rel.Images["base"].Digest != releasedBase || rel.Images["solo"].Digest != releasedSolo {
		t.Errorf("run 2 release: %+v", rel)
	}
	compose, _ = os.ReadFile(filepath.Join(outDir, "stacks/platform/compose.yaml"))
	if !strings.Contains(string(compose), "image: "+reg+"/solo:release-main@"+releasedSolo) {
		t.Errorf("run 2 pinned compose:\n%s", compose)
	}
}

type releaseJSON struct {
	Commit string `json:"commit"`
	Ref    string `json:"ref"`
	Images map[string]struct {
		Digest  string `json:"digest"`
		Rebuilt bool   `json:"rebuilt"`
		Ref     string `json:"ref"`
	} `json:"images"`
}

func readRelease(t *testing.T, dir string) releaseJSON {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "release.json"))
	if err != nil {
		t.Fatalf("release.json: %v", err)
	}
	var rel releaseJSON
	if err := json.Unmarshal(b, &rel); err != nil {
		t.Fatal(err)
	}
	return rel
}
