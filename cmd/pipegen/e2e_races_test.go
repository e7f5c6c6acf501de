package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/release"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// fixtureRepo makes a repository initialised by `pipegen init` with the fixture templates and
// files, committed on main. (GitLab's security templates are left out: gitlab-ci-local would
// fetch them from gitlab.com.)
func fixtureRepo(t *testing.T, dir, reg, logFile, outDir string, files map[string]string) *gitRepo {
	t.Helper()
	r := &gitRepo{T: t, Dir: dir}
	os.MkdirAll(r.Dir, 0o755)
	r.Git("init", "-q", "-b", "main")
	r.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	if res := pipegen(t, nil, "init", "--repo", r.Dir, "--registry", reg, "--security-templates=false"); res.code != 0 {
		t.Fatal(res.stderr)
	}
	r.Write(fixtureTemplates(logFile, outDir))
	r.Write(map[string]string{".gitignore": ".gitlab-ci-local/\n"})
	r.Write(files)
	r.Commit("initial")
	return r
}

// Two pipelines on one ref, interleaved: P1 (older commit) reads the channel, P2 (newer) runs
// and publishes while P1 is still running, then P1 reaches its release. P1 must fail with a
// clear message and leave P2's release on the channel (no rollback).
func TestEndToEndInterleavedPipelines(t *testing.T) {
	gcl := gitlabCILocal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	bin := buildTools(ctx, t)
	reg := testenv.Registry(t) + "/sawmill/platform"
	work := t.TempDir()
	logFile, outDir := filepath.Join(work, "jobs.log"), filepath.Join(work, "release")
	gates := filepath.Join(work, "gates")
	os.MkdirAll(gates, 0o755)
	r := fixtureRepo(t, filepath.Join(work, "repo"), reg, logFile, outDir, map[string]string{
		"images/app/Dockerfile":        "FROM scratch\n",
		"images/solo/Dockerfile":       "FROM scratch\n",
		"stacks/platform/compose.yaml": "services:\n  app:\n    image: ${REGISTRY}/app:latest\n",
	})
	if out, ok := runCI(ctx, t, gcl, r.Dir, bin, logFile); !ok {
		t.Fatalf("first pipeline:\n%s", out)
	}
	clone := func(name string) string {
		dir := filepath.Join(work, name)
		r.Git("clone", "-q", r.Dir, dir)
		c := &gitRepo{T: t, Dir: dir}
		c.Git("remote", "set-url", "origin", "https://gitlab.example.com/sawmill/platform.git")
		return dir
	}
	r.Write(map[string]string{"images/app/v": "1"})
	c1 := r.Commit("P1: app")
	p1Dir := clone("p1")
	r.Write(map[string]string{"images/solo/v": "2"})
	c2 := r.Commit("P2: solo")
	p2Dir := clone("p2")

	// P1 runs until its release job, which waits for the gate.
	wait := filepath.Join(gates, c1+".wait")
	os.WriteFile(wait, nil, 0o644)
	type result struct {
		out string
		ok  bool
	}
	p1 := make(chan result, 1)
	go func() {
		cmd := exec.CommandContext(ctx, gcl, "--force-shell-executor", "--no-color")
		cmd.Dir = p1Dir
		cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		p1 <- result{string(out), err == nil && !strings.Contains(string(out), " FAIL ")}
	}()
	for {
		if _, err := os.Stat(filepath.Join(gates, c1+".reached")); err == nil {
			break
		}
		select {
		case res := <-p1:
			t.Fatalf("P1 ended before its release job:\n%s", res.out)
		case <-time.After(200 * time.Millisecond):
		}
	}
	// P2 runs to the end and publishes.
	if out, ok := runCI(ctx, t, gcl, p2Dir, bin, ""); !ok {
		t.Fatalf("P2:\n%s", out)
	}
	rec := readRecord(ctx, t, reg, "main")
	if rec.Commit != c2 {
		t.Fatalf("after P2 the channel names %s, want %s", rec.Commit, c2)
	}
	p2App := rec.Images["app"].Digest
	// P1 goes on: its release must refuse to move the channel.
	os.Remove(wait)
	res := <-p1
	if res.ok {
		t.Fatalf("P1 published over P2:\n%s", res.out)
	}
	if !strings.Contains(res.out, "another pipeline on this ref published in between") || !strings.Contains(res.out, "commit "+c2) {
		t.Errorf("P1's failure does not say why:\n%s", res.out)
	}
	if rec := readRecord(ctx, t, reg, "main"); rec.Commit != c2 {
		t.Errorf("the channel was rolled back to %s", rec.Commit)
	}
	if d, err := (release.OCI{}).Digest(ctx, reg+"/app:release-main"); err != nil || d != p2App {
		t.Errorf("app:release-main = %s, %v; want P2's %s", d, err, p2App)
	}
}

// More sign and policy jobs than GitLab's needs limit: 60 images and 10 stacks (more sign jobs
// than the limit alone), and 45 and 10 (sign jobs under the limit, sign plus policy jobs over
// it: the case where policy gates used to be dropped). The last policy job ends only after
// every image is signed, so a release that did not wait for it would run before it. The release runs after every policy
// job and every sign job and pins every image's digest.
func TestEndToEndManyImages(t *testing.T) {
	gcl := gitlabCILocal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	bin := buildTools(ctx, t)
	for _, n := range []int{60, 45} {
		t.Run(fmt.Sprintf("%d_images_10_stacks", n), func(t *testing.T) { manyImages(ctx, t, gcl, bin, n, 10) })
	}
}

func manyImages(ctx context.Context, t *testing.T, gcl, bin string, images, stacks int) {
	reg := testenv.Registry(t) + "/sawmill/platform"
	work := t.TempDir()
	logFile, outDir := filepath.Join(work, "jobs.log"), filepath.Join(work, "release")
	files := map[string]string{}
	for i := range images {
		files[fmt.Sprintf("images/img%02d/Dockerfile", i)] = "FROM scratch\n"
	}
	for i := range stacks {
		files[fmt.Sprintf("stacks/s%02d/compose.yaml", i)] = fmt.Sprintf("services:\n  a:\n    image: ${REGISTRY}/img%02d:latest\n", i)
	}
	r := fixtureRepo(t, filepath.Join(work, "repo"), reg, logFile, outDir, files)
	cfg, _ := os.ReadFile(filepath.Join(r.Dir, "pipegen.yaml"))
	r.Write(map[string]string{"pipegen.yaml": strings.Replace(string(cfg), "scanners: [container_scanning, sbom]", "scanners: []", 1)})
	r.Commit("no scanners")
	out, ok := runCI(ctx, t, gcl, r.Dir, bin, logFile)
	if !ok {
		t.Fatalf("pipeline:\n%s", out)
	}
	// The release job of the child pipeline the generate job wrote.
	child := findFile(t, filepath.Join(r.Dir, ".gitlab-ci-local"), "child.yml")
	doc := jobs(t, mustRead(t, child))
	rel := doc["release"].(map[string]any)
	relStage := rel["stage"].(string)
	needs, hasNeeds := rel["needs"].([]any)
	needed := map[string]bool{}
	for _, n := range needs {
		needed[n.(map[string]any)["job"].(string)] = true
	}
	stageOf := map[string]int{}
	for i, st := range doc["stages"].([]any) {
		stageOf[st.(string)] = i
	}
	for name, j := range doc {
		if !strings.HasPrefix(name, "policy:") && !strings.HasPrefix(name, "sign:") {
			continue
		}
		st := j.(map[string]any)["stage"].(string)
		if hasNeeds && !needed[name] || !hasNeeds && stageOf[st] >= stageOf[relStage] {
			t.Errorf("the release does not wait for %s (needs %d jobs)", name, len(needs))
		}
	}
	if len(needs) > 50 {
		t.Errorf("the release needs %d jobs, above GitLab's limit", len(needs))
	}
	lines := readLog(t, logFile)
	releaseAt, policies, signs := -1, 0, 0
	for i, l := range lines {
		switch {
		case l.job == "release":
			releaseAt = i
		case strings.HasPrefix(l.job, "policy:"):
			policies++
			if releaseAt >= 0 {
				t.Errorf("%s ran after the release", l.job)
			}
		case strings.HasPrefix(l.job, "sign:"):
			signs++
			if releaseAt >= 0 {
				t.Errorf("%s ran after the release", l.job)
			}
		}
	}
	if releaseAt < 0 || policies != stacks || signs != images {
		t.Fatalf("release at %d, %d policy jobs, %d sign jobs\n%s", releaseAt, policies, signs, out)
	}
	released := readRelease(t, outDir)
	if len(released.Images) != images {
		t.Fatalf("release has %d images", len(released.Images))
	}
	for n, img := range released.Images {
		if !img.Rebuilt || !strings.HasPrefix(img.Digest, "sha256:") {
			t.Errorf("%s: %+v", n, img)
		}
	}
}

// findFile returns the first file called name below dir.
func findFile(t *testing.T, dir, name string) string {
	t.Helper()
	var found string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == name && found == "" {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no %s under %s", name, dir)
	}
	return found
}
