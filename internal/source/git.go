package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Git follows a branch or tag of a git repository: each time it fetches the ref into a local repository (in
// Dir), checks its newest commit out, and reads the release at Path inside it (a directory with
// release.json, as pipegen writes it). The key is the commit.
//
// It speaks git itself (go-git: https, ssh, git; file:// runs the machine's git-upload-pack), so the agent's
// FROM scratch image needs no git binary. Credentials come from the URL's user info (https) or the SSH
// agent; proxies from the process environment.
type Git struct {
	URL, Ref, Path string
	// Dir holds the repository.
	Dir string
}

// fetched is where the ref's commit is kept in the local repository.
const fetched = plumbing.ReferenceName("refs/sawmill/fetched")

// Latest fetches and returns the release at the ref's newest commit.
func (g *Git) Latest(ctx context.Context) (*Release, string, error) {
	repo, err := git.PlainOpen(g.Dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		if err := os.MkdirAll(g.Dir, 0o755); err != nil {
			return nil, "", err
		}
		repo, err = git.PlainInit(g.Dir, false)
	}
	if err != nil {
		return nil, "", fmt.Errorf("git repository %s: %w", g.Dir, err)
	}
	remote := git.NewRemote(repo.Storer, &config.RemoteConfig{Name: "release", URLs: []string{g.URL}})
	refs, err := remote.ListContext(ctx, &git.ListOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("git ls-remote %s: %w", g.URL, err)
	}
	name, err := resolveRef(refs, g.Ref)
	if err != nil {
		return nil, "", fmt.Errorf("git %s: %w", g.URL, err)
	}
	err = remote.FetchContext(ctx, &git.FetchOptions{
		RefSpecs: []config.RefSpec{config.RefSpec("+" + name.String() + ":" + fetched.String())},
		Depth:    1,
		Force:    true,
		Tags:     git.NoTags,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return nil, "", fmt.Errorf("git fetch %s %s: %w", g.URL, g.Ref, err)
	}
	ref, err := repo.Reference(fetched, true)
	if err != nil {
		return nil, "", fmt.Errorf("git fetch %s %s: %w", g.URL, g.Ref, err)
	}
	commit, err := peel(repo, ref.Hash())
	if err != nil {
		return nil, "", fmt.Errorf("git %s %s: %w", g.URL, g.Ref, err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return nil, "", err
	}
	if err := wt.Checkout(&git.CheckoutOptions{Hash: commit, Force: true}); err != nil {
		return nil, "", fmt.Errorf("git checkout %s: %w", commit, err)
	}
	rel, err := Dir(filepath.Join(g.Dir, filepath.FromSlash(g.Path)))
	if err != nil {
		return nil, "", fmt.Errorf("git %s@%s: %w", g.URL, g.Ref, err)
	}
	return rel, "git-" + commit.String(), nil
}

// resolveRef finds ref among the remote's references as `git fetch URL REF` does: a full name, else a branch,
// else a tag.
func resolveRef(refs []*plumbing.Reference, ref string) (plumbing.ReferenceName, error) {
	have := map[plumbing.ReferenceName]bool{}
	for _, r := range refs {
		have[r.Name()] = true
	}
	for _, n := range []string{ref, "refs/heads/" + ref, "refs/tags/" + ref} {
		if strings.HasPrefix(n, "refs/") && have[plumbing.ReferenceName(n)] {
			return plumbing.ReferenceName(n), nil
		}
	}
	return "", fmt.Errorf("couldn't find remote ref %s", ref)
}

// peel follows an annotated tag to its commit.
func peel(repo *git.Repository, h plumbing.Hash) (plumbing.Hash, error) {
	for range 10 {
		tag, err := repo.TagObject(h)
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			if _, err := object.GetCommit(repo.Storer, h); err != nil {
				return plumbing.ZeroHash, fmt.Errorf("commit %s: %w", h, err)
			}
			return h, nil
		}
		if err != nil {
			return plumbing.ZeroHash, err
		}
		h = tag.Target
	}
	return plumbing.ZeroHash, fmt.Errorf("tag %s: too many levels", h)
}
