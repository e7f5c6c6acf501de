// Package source fetches the desired state the agent reconciles: a release written by pipegen (see
// docs/release.md), either from GitLab (the newest successful deployment of an environment, and the
// release artifact of that deployment's job) or from a local directory.
//
// In: where to look (GitLab URL, project, environment; or a directory). Out: a *Release whose compose files
// are in a local directory, ready for internal/compose. It imports client-go, internal/fault, internal/manifest
// (the release.json schema) and the standard library; nothing of the agent's other stages.
package source

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/manifest"
)

// Release is a fetched release: the manifest and the directory its compose files were written to.
type Release struct {
	Manifest manifest.Release
	// Dir holds release.json and stacks/..., laid out as in the artifact.
	Dir string
	// Where it came from, for reports: the GitLab deployment and job, when it came from GitLab.
	DeploymentID, JobID int64
	// Ref is the deployment's branch or tag as GitLab recorded it (not release.json's, which the release's
	// authors write); Tag says it is a tag. Empty when the release did not come from GitLab.
	Ref string
	Tag bool
}

// Files returns the compose files of stack for environment env, as paths in r.Dir, in load order.
func (r *Release) Files(stack, env string) ([]string, error) {
	return r.Manifest.Files(r.Dir, stack, env)
}

// Dir reads a release from a local directory (release.json at its top). A symbolic link in the tree that
// resolves outside it (or does not resolve) is refused: a release reads nothing but itself.
func Dir(dir string) (*Release, error) {
	if err := checkLinks(dir); err != nil {
		return nil, err
	}
	b, err := readLimited(filepath.Join(dir, manifest.FileName), manifest.MaxSize+1) // Parse refuses more than MaxSize
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("release directory: %w", err))
	}
	m, err := manifest.Parse(b)
	if err != nil {
		return nil, err
	}
	return &Release{Manifest: *m, Dir: dir}, nil
}

// checkLinks refuses a tree with a symbolic link that leaves it.
func checkLinks(dir string) error {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fault.InvalidErr(fmt.Errorf("release directory: %w", err))
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fault.InvalidErr(fmt.Errorf("release directory: %w", err))
		}
		if d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		name, _ := filepath.Rel(root, p)
		target, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fault.InvalidErr(fmt.Errorf("release file %s: a link that does not resolve: %w", name, err))
		}
		if rel, err := filepath.Rel(root, target); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return fault.InvalidErr(fmt.Errorf("release file %s: a link to %s, outside the release", name, target))
		}
		return nil
	})
}

// readLimited reads at most n bytes of a file.
func readLimited(name string, n int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}
