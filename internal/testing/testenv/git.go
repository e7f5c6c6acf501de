package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// GitRepo is a real git repository in a temporary directory, for the tests of what reads repositories
// (pipegen's discovery and change detection, the agent's git source).
type GitRepo struct {
	T   testing.TB
	Dir string
}

// NewGitRepo initialises a repository on branch main with files committed ("initial").
func NewGitRepo(t testing.TB, files map[string]string) *GitRepo {
	t.Helper()
	r := &GitRepo{T: t, Dir: t.TempDir()}
	r.Git("init", "-q", "-b", "main")
	r.Write(files)
	r.Commit("initial")
	return r
}

// Git runs git in the repository, with a fixed identity and no signing, and returns its trimmed output.
func (r *GitRepo) Git(args ...string) string {
	r.T.Helper()
	cmd := exec.Command("git", append([]string{"-C", r.Dir, "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.T.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Write writes files (slash-separated paths relative to the repository) into the work tree.
func (r *GitRepo) Write(files map[string]string) {
	r.T.Helper()
	for p, c := range files {
		dst := filepath.Join(r.Dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			r.T.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(c), 0o644); err != nil {
			r.T.Fatal(err)
		}
	}
}

// Commit commits everything and returns the new commit's hash.
func (r *GitRepo) Commit(msg string) string {
	r.T.Helper()
	r.Git("add", "-A")
	r.Git("commit", "-q", "--allow-empty", "-m", msg)
	return r.Git("rev-parse", "HEAD")
}
