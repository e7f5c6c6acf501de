package source

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func TestGitFollowsTheRef(t *testing.T) {
	files := func(commit string) map[string]string {
		return map[string]string{
			"deploy/release.json":                 releaseJSON(commit, "stacks/platform/compose.yaml"),
			"deploy/stacks/platform/compose.yaml": "services:\n  a:\n    image: x:" + commit[:4] + "\n",
		}
	}
	repo := testenv.NewGitRepo(t, files(sha1))
	g := &Git{URL: "file://" + repo.Dir, Ref: "main", Path: "deploy", Dir: t.TempDir()}
	rel, key1, err := g.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rel.Manifest.Commit != sha1 {
		t.Fatalf("commit %s", rel.Manifest.Commit)
	}
	repo.Write(files(sha2))
	repo.Commit("second")
	rel, key2, err := g.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if key1 == key2 || rel.Manifest.Commit != sha2 {
		t.Fatalf("the new commit was not followed: %s %s %s", key1, key2, rel.Manifest.Commit)
	}
	paths, _ := rel.Files("platform", "")
	b, _ := os.ReadFile(paths[0])
	if !strings.Contains(string(b), "x:2222") {
		t.Fatalf("compose of the new commit not checked out: %s", b)
	}
	// An annotated tag is followed to its commit.
	repo.Git("tag", "-a", "v2", "-m", "release v2")
	tagged := &Git{URL: "file://" + repo.Dir, Ref: "v2", Path: "deploy", Dir: t.TempDir()}
	if rel, key, err := tagged.Latest(context.Background()); err != nil || key != key2 || rel.Manifest.Commit != sha2 {
		t.Fatalf("tag v2: %v %s %v", err, key, rel)
	}
	g.Ref = "nope"
	if _, _, err := g.Latest(context.Background()); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("a missing ref: %v", err)
	}
}
