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
	"os"
	"path/filepath"

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
}

// Files returns the compose files of stack for environment env, as paths in r.Dir, in load order.
func (r *Release) Files(stack, env string) ([]string, error) {
	return r.Manifest.Files(r.Dir, stack, env)
}

// Dir reads a release from a local directory (release.json at its top).
func Dir(dir string) (*Release, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifest.FileName))
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("release directory: %w", err))
	}
	m, err := manifest.Parse(b)
	if err != nil {
		return nil, err
	}
	return &Release{Manifest: *m, Dir: dir}, nil
}
