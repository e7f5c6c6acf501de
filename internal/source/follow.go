package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sabeiro/sawmill/internal/fault"
)

// Latest is a source of the newest release. Key identifies a release, so that callers can tell a new one
// from the one they applied.
type Latest interface {
	Latest(ctx context.Context) (rel *Release, key string, err error)
}

// Follow follows an environment in GitLab: it asks for the newest successful deployment each time, and
// downloads its release into Dir only when the deployment changed.
type Follow struct {
	GitLab *GitLab
	// Dir is where releases are kept (one directory each; the previous one is removed).
	Dir string

	cur   *Release
	curID int64
}

// Latest returns the release of the newest successful deployment.
func (f *Follow) Latest(ctx context.Context) (*Release, string, error) {
	d, err := f.GitLab.Latest(ctx)
	if err != nil {
		return nil, "", err
	}
	key := "deployment-" + strconv.FormatInt(d.ID, 10)
	if f.cur != nil && f.curID == d.ID {
		return f.cur, key, nil
	}
	dir := filepath.Join(f.Dir, key)
	if err := os.RemoveAll(dir); err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("release directory: %w", err)
	}
	rel, err := f.GitLab.Fetch(ctx, d, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, key, &ReleaseError{Commit: d.SHA, Ref: d.Ref, Tag: d.Tag, Err: err}
	}
	if f.cur != nil && f.cur.Dir != dir {
		os.RemoveAll(f.cur.Dir)
	}
	f.cur, f.curID = rel, d.ID
	return rel, key, nil
}

// Release fetches an earlier release of the environment again by its key (deployment-<id>), into a new
// directory under Dir that the caller owns (and removes): the release of a pin that another agent set.
func (f *Follow) Release(ctx context.Context, key string) (*Release, error) {
	n, ok := strings.CutPrefix(key, "deployment-")
	id, err := strconv.ParseInt(n, 10, 64)
	if !ok || err != nil || id <= 0 {
		return nil, fault.InvalidErr(fmt.Errorf("release %q is not a GitLab deployment", key))
	}
	d, err := f.GitLab.Deployment(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("release directory: %w", err)
	}
	dir, err := os.MkdirTemp(f.Dir, "fetched-")
	if err != nil {
		return nil, fmt.Errorf("release directory: %w", err)
	}
	rel, err := f.GitLab.Fetch(ctx, d, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return rel, nil
}

// ReleaseError is a release that was found but could not be read (an invalid release.json, a missing
// artifact): Commit (and Ref, Tag) are the deployment's, so the failure can be reported on it.
type ReleaseError struct {
	Commit string
	Ref    string
	Tag    bool
	Err    error
}

func (e *ReleaseError) Error() string { return e.Err.Error() }
func (e *ReleaseError) Unwrap() error { return e.Err }

// Local is a release in a directory, for development and tests. Its key is the manifest's commit.
type Local struct{ Path string }

// Latest reads the directory.
func (l Local) Latest(context.Context) (*Release, string, error) {
	rel, err := Dir(l.Path)
	if err != nil {
		return nil, "", err
	}
	return rel, "commit-" + rel.Manifest.Commit, nil
}
