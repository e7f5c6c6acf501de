package source

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Git follows a branch or tag of a git repository: each time it fetches the ref into a local clone (in
// Dir), checks its newest commit out, and reads the release at Path inside it (a directory with
// release.json, as pipegen writes it). The key is the commit.
type Git struct {
	URL, Ref, Path string
	// Dir holds the clone.
	Dir string
	// Env is the environment of the git command (PATH, HOME, proxies; the caller decides).
	Env []string
}

// Latest fetches and returns the release at the ref's newest commit.
func (g *Git) Latest(ctx context.Context) (*Release, string, error) {
	if _, err := os.Stat(filepath.Join(g.Dir, ".git")); err != nil {
		if err := os.MkdirAll(g.Dir, 0o755); err != nil {
			return nil, "", err
		}
		if _, err := g.git(ctx, "init", "-q"); err != nil {
			return nil, "", err
		}
	}
	if _, err := g.git(ctx, "fetch", "-q", "--depth", "1", "--", g.URL, g.Ref); err != nil {
		return nil, "", err
	}
	if _, err := g.git(ctx, "checkout", "-q", "--force", "--detach", "FETCH_HEAD"); err != nil {
		return nil, "", err
	}
	commit, err := g.git(ctx, "rev-parse", "HEAD")
	if err != nil {
		return nil, "", err
	}
	rel, err := Dir(filepath.Join(g.Dir, filepath.FromSlash(g.Path)))
	if err != nil {
		return nil, "", fmt.Errorf("git %s@%s: %w", g.URL, g.Ref, err)
	}
	return rel, "git-" + commit, nil
}

func (g *Git) git(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", g.Dir}, args...)...)
	cmd.Env = append(append([]string(nil), g.Env...), "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}
