package source

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func gitIn(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func TestGitFollowsTheRef(t *testing.T) {
	repo := t.TempDir()
	gitIn(t, repo, "init", "-q", "-b", "main")
	write := func(commit string) {
		files := map[string]string{
			"deploy/release.json":                 manifest(commit, "stacks/platform/compose.yaml"),
			"deploy/stacks/platform/compose.yaml": "services:\n  a:\n    image: x:" + commit[:4] + "\n",
		}
		for p, c := range files {
			full := filepath.Join(repo, p)
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		gitIn(t, repo, "add", "-A")
		gitIn(t, repo, "commit", "-q", "-m", commit[:4])
	}
	write(sha1)
	g := &Git{URL: "file://" + repo, Ref: "main", Path: "deploy", Dir: t.TempDir()}
	rel, key1, err := g.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rel.Manifest.Commit != sha1 {
		t.Fatalf("commit %s", rel.Manifest.Commit)
	}
	write(sha2)
	rel, key2, err := g.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if key1 == key2 || rel.Manifest.Commit != sha2 {
		t.Fatalf("the new commit was not followed: %s %s %s", key1, key2, rel.Manifest.Commit)
	}
	files, _ := rel.Files("platform", "")
	b, _ := os.ReadFile(files[0])
	if !strings.Contains(string(b), "x:2222") {
		t.Fatalf("compose of the new commit not checked out: %s", b)
	}
	g.Ref = "nope"
	if _, _, err := g.Latest(context.Background()); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("a missing ref: %v", err)
	}
}
