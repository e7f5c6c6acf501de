package main

import (
	"context"
	"encoding/json"
	"github.com/sabeiro/sawmill/internal/release"
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
// job to log. A build pushes a random image (pushrandom, in PATH) so that the release can move
// the channel; it fails when images/<image>/FAIL exists. The release publishes the channel;
// when <gates>/<commit>.wait exists it first writes <gates>/<commit>.reached and waits until
// the .wait file is gone (to interleave two pipelines).
func fixtureTemplates(log, out string) map[string]string {
	gates := filepath.Join(filepath.Dir(log), "gates")
	return map[string]string{
		"pipelines/build.yml": `.sawmill-build:
  script:
    - 'args=$(eval "printf ''%s'' \"$SAWMILL_BUILD_ARGS\"" | tr "\n" " ")'
    - echo "build:$SAWMILL_IMAGE args=$args" >> ` + log + `
    - test ! -f "images/$SAWMILL_IMAGE/FAIL"
    - digest=$(pushrandom "$SAWMILL_REPOSITORY:$SAWMILL_TAG")
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
		"pipelines/test.yml": `.sawmill-image-test:
  script:
    - echo "test:$SAWMILL_IMAGE" >> ` + log + `
    - sh -ec "$SAWMILL_TEST_SCRIPT"
.sawmill-policy:
  script:
    - echo "policy:$SAWMILL_STACK envs=$SAWMILL_ENVIRONMENTS" >> ` + log + `
`,
		"pipelines/release.yml": `.sawmill-release:
  variables:
    SAWMILL_PUBLISH: "true"
  script:
    - 'if [ -f ` + gates + `/$CI_COMMIT_SHA.wait ]; then touch ` + gates + `/$CI_COMMIT_SHA.reached; while [ -f ` + gates + `/$CI_COMMIT_SHA.wait ]; do sleep 0.2; done; fi'
    - echo "release rebuilt=$(printf %s "$SAWMILL_REBUILT" | tr ' ' ,) reused=$(printf %s "$SAWMILL_REUSED" | tr ' ' ,) BASE_DIGEST=$BASE_DIGEST APP_DIGEST=$APP_DIGEST SOLO_DIGEST=$SOLO_DIGEST" >> ` + log + `
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

	bin := buildTools(ctx, t)

	// A real registry (in process): the images, the channel tags and the channel records.
	reg := testenv.Registry(t) + "/sawmill/platform"

	work := t.TempDir()
	logFile, outDir := filepath.Join(work, "jobs.log"), filepath.Join(work, "release")
	r := &gitRepo{T: t, Dir: filepath.Join(work, "repo")}
	os.MkdirAll(r.Dir, 0o755)
	r.Git("init", "-q", "-b", "main")
	r.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	if res := pipegen(t, nil, "init", "--repo", r.Dir, "--registry", reg, "--security-templates=false"); res.code != 0 {
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
		out, ok := runCI(ctx, t, gcl, r.Dir, bin, logFile, extra...)
		if !ok {
			t.Fatalf("the pipeline failed:\n%s", out)
		}
		return out
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
	want := []string{"build:base", "build:app", "build:solo", "scan:base", "scan:app", "scan:solo", "sign:base", "sign:app", "sign:solo", "policy:platform", "release", "deploy:staging"}
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

	jobsRan := func() []string {
		var out []string
		for _, l := range readLog(t, logFile) {
			out = append(out, l.job)
		}
		return slices.Sorted(slices.Values(out))
	}

	// Run 2: app changed and its build fails: nothing is published.
	r.Write(map[string]string{"images/app/main.txt": "v2\n", "images/app/FAIL": "x"})
	r.Commit("change app, broken")
	if out, ok := runCI(ctx, t, gcl, r.Dir, bin, logFile); ok {
		t.Fatalf("run 2 should fail:\n%s", out)
	}
	if rec := readRecord(ctx, t, reg, "main"); rec.Commit != first {
		t.Fatalf("a failed pipeline moved the channel to %s", rec.Commit)
	}

	// Run 3: the build is fixed and solo changes. The previous push's diff (solo only) would
	// reuse the app of run 1 while the release claims this commit: the base is the last
	// release (run 1), so app is rebuilt too; base is reused with the digest run 1 released.
	os.Remove(filepath.Join(r.Dir, "images/app/FAIL"))
	r.Write(map[string]string{"images/solo/main.txt": "v2\n"})
	third := r.Commit("fix app, change solo")
	output = gitlabCI()
	lines = readLog(t, logFile)
	want = []string{"build:app", "build:solo", "deploy:staging", "policy:platform", "release", "scan:app", "scan:solo", "sign:app", "sign:solo"}
	if got := jobsRan(); !slices.Equal(got, want) {
		t.Fatalf("run 3 jobs: %v\nwant %v\n%s", got, want, output)
	}
	if got := field("build:app", "BASE_IMAGE"); got != reg+"/base@"+digests["base"] {
		t.Errorf("run 3: build:app BASE_IMAGE=%q, want the released base by digest", got)
	}
	if field("release", "rebuilt") != "app,solo" || field("release", "reused") != "base" {
		t.Errorf("run 3 release: %v", lines)
	}
	rel = readRelease(t, outDir)
	if rel.Commit != third || !rel.Images["app"].Rebuilt || !rel.Images["solo"].Rebuilt || rel.Images["base"].Rebuilt || rel.Images["base"].Digest != digests["base"] {
		t.Errorf("run 3 release: %+v", rel)
	}
	if rec := readRecord(ctx, t, reg, "main"); rec.Commit != third || rec.Images["app"].Digest != rel.Images["app"].Digest {
		t.Errorf("run 3 channel record: %+v", rec)
	}
	compose, _ = os.ReadFile(filepath.Join(outDir, "stacks/platform/compose.yaml"))
	if !strings.Contains(string(compose), "image: "+reg+"/app:"+third+"@"+rel.Images["app"].Digest) {
		t.Errorf("run 3 pinned compose:\n%s", compose)
	}
	mainRelease := rel

	// Run 4: a new branch with one change rebuilds only that image, from main's release.
	r.Git("checkout", "-q", "-b", "feature")
	r.Write(map[string]string{"images/solo/feature.txt": "f\n"})
	r.Commit("feature: solo")
	output = gitlabCI()
	if got, want := jobsRan(), []string{"build:solo", "policy:platform", "release", "scan:solo", "sign:solo"}; !slices.Equal(got, want) {
		t.Fatalf("new branch jobs: %v\nwant %v\n%s", got, want, output)
	}
	rel = readRelease(t, outDir)
	if rel.Images["app"].Digest != mainRelease.Images["app"].Digest || rel.Ref != "feature" {
		t.Errorf("new branch release: %+v", rel)
	}
	featureCommit := readRecord(ctx, t, reg, "feature").Commit

	// Run 5: a force push replaces the branch's released commit, which is then not in the
	// clone: the base falls back to main's release (not an error, not everything).
	r.Git("reset", "-q", "--hard", "main")
	r.Write(map[string]string{"images/app/feature.txt": "g\n"})
	forced := r.Commit("feature, rewritten: app")
	r.Git("reflog", "expire", "--expire=now", "--all")
	r.Git("gc", "-q", "--prune=now")
	if r.Git("cat-file", "-t", forced) != "commit" {
		t.Fatal("setup")
	}
	output = gitlabCI()
	if got, want := jobsRan(), []string{"build:app", "policy:platform", "release", "scan:app", "sign:app"}; !slices.Equal(got, want) {
		t.Fatalf("force push jobs: %v\nwant %v\n%s", got, want, output)
	}
	if !strings.Contains(output, "is not in the clone (force push?)") || !strings.Contains(output, featureCommit[:12]) {
		t.Errorf("the generate job does not say why the base fell back:\n%s", output)
	}
	rel = readRelease(t, outDir)
	if rel.Commit != forced || rel.Images["solo"].Digest != mainRelease.Images["solo"].Digest {
		t.Errorf("force push release: %+v", rel)
	}
}

// buildTools builds pipegen and pushrandom into a directory for PATH.
func buildTools(ctx context.Context, t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	for pkg, out := range map[string]string{".": "pipegen", "./testdata/pushrandom": "pushrandom"} {
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, out), pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return bin
}

// runCI runs gitlab-ci-local in dir with bin first in PATH and reports whether every job
// passed. gitlab-ci-local 4.62.0 passes a trigger job with strategy: depend even when its
// child pipeline failed: a failed job is found in the output.
func runCI(ctx context.Context, t *testing.T, gcl, dir, bin, logFile string, extra ...string) (string, bool) {
	t.Helper()
	os.Remove(logFile)
	args := append([]string{"--force-shell-executor", "--no-color"}, extra...)
	cmd := exec.CommandContext(ctx, gcl, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err == nil && !strings.Contains(string(out), " FAIL ")
}

// readRecord reads a ref's channel record from the registry.
func readRecord(ctx context.Context, t *testing.T, reg, ref string) *release.Release {
	t.Helper()
	rec, err := (release.OCI{}).ReadRecord(ctx, release.RecordRef(reg, release.ChannelTag(ref)))
	if err != nil {
		t.Fatalf("channel record of %s: %v", ref, err)
	}
	return rec.Release
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
