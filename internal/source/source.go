// Package source fetches the desired state the agent reconciles: a release written by pipegen (see
// docs/release.md), either from GitLab (the newest successful deployment of an environment, and the
// release artifact of that deployment's job) or from a local directory.
//
// In: where to look (GitLab URL, project, environment; or a directory). Out: a *Release whose compose files
// are in a local directory, ready for internal/compose. It imports client-go, internal/fault and the
// standard library; nothing of the agent's other stages.
package source

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/sabeiro/sawmill/internal/fault"
)

// SchemaVersion is the release.json version this agent reads.
const SchemaVersion = 1

// Manifest is release.json.
type Manifest struct {
	SchemaVersion int    `json:"schema_version"`
	Project       string `json:"project"`
	Commit        string `json:"commit"`
	Ref           string `json:"ref"`
	Pipeline      struct {
		ID  int64  `json:"id"`
		URL string `json:"url"`
	} `json:"pipeline"`
	Registry string           `json:"registry"`
	Channel  string           `json:"channel"`
	Images   map[string]Image `json:"images"`
	Stacks   map[string]Stack `json:"stacks"`
}

// Image is one image of a release.
type Image struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
	Digest     string `json:"digest"`
	Rebuilt    bool   `json:"rebuilt"`
	Ref        string `json:"ref"`
}

// Stack lists a stack's compose files.
type Stack struct {
	Files        []string            `json:"files"`
	Environments map[string][]string `json:"environments,omitempty"`
}

// Release is a fetched release: the manifest and the directory its compose files were written to.
type Release struct {
	Manifest Manifest
	// Dir holds release.json and stacks/..., laid out as in the artifact.
	Dir string
	// Where it came from, for reports: the GitLab deployment and job, when it came from GitLab.
	DeploymentID, JobID int64
}

// Files returns the compose files of stack for environment env, as paths in r.Dir, in load order.
func (r *Release) Files(stack, env string) ([]string, error) {
	st, ok := r.Manifest.Stacks[stack]
	if !ok {
		return nil, fault.InvalidErr(fmt.Errorf("release %s has no stack %q", r.Manifest.Commit, stack))
	}
	files := st.Files
	if env != "" && st.Environments != nil {
		f, ok := st.Environments[env]
		if !ok {
			return nil, fault.InvalidErr(fmt.Errorf("release %s: stack %s has no environment %q", r.Manifest.Commit, stack, env))
		}
		files = f
	}
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = filepath.Join(r.Dir, filepath.FromSlash(f))
	}
	return out, nil
}

// StackNames returns the release's stacks in name order.
func (m *Manifest) StackNames() []string {
	out := make([]string, 0, len(m.Stacks))
	for k := range m.Stacks {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ParseManifest reads and checks release.json: a version this agent knows, digests in canonical form,
// refs that pin them, and file paths that stay inside stacks/.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&m); err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("release.json: %w", err))
	}
	if m.SchemaVersion != SchemaVersion {
		return nil, fault.InvalidErr(fmt.Errorf("release.json: schema_version %d: this agent reads version %d", m.SchemaVersion, SchemaVersion))
	}
	var errs []error
	for _, name := range sortedKeys(m.Images) {
		img := m.Images[name]
		if !digestRE.MatchString(img.Digest) {
			errs = append(errs, fmt.Errorf("images.%s.digest %q is not sha256:<64 hex>", name, img.Digest))
		}
		if !strings.HasSuffix(img.Ref, "@"+img.Digest) {
			errs = append(errs, fmt.Errorf("images.%s.ref %q does not pin images.%s.digest", name, img.Ref, name))
		}
	}
	if len(m.Stacks) == 0 {
		errs = append(errs, errors.New("stacks: the release has no stack"))
	}
	for _, name := range sortedKeys(m.Stacks) {
		st := m.Stacks[name]
		if len(st.Files) == 0 {
			errs = append(errs, fmt.Errorf("stacks.%s.files is empty", name))
		}
		for _, f := range allFiles(st) {
			if err := checkPath(f); err != nil {
				errs = append(errs, fmt.Errorf("stacks.%s: %w", name, err))
			}
		}
	}
	if len(errs) > 0 {
		return nil, fault.InvalidErr(fmt.Errorf("release.json: %w", errors.Join(errs...)))
	}
	return &m, nil
}

func allFiles(st Stack) []string {
	seen := map[string]bool{}
	var out []string
	add := func(fs []string) {
		for _, f := range fs {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	add(st.Files)
	for _, env := range sortedKeys(st.Environments) {
		add(st.Environments[env])
	}
	return out
}

// checkPath refuses a path that could leave the release directory.
func checkPath(p string) error {
	clean := path.Clean(p)
	if p == "" || path.IsAbs(p) || clean != p || !strings.HasPrefix(clean, "stacks/") || strings.Contains(p, "\\") {
		return fmt.Errorf("file %q: release files must be relative paths under stacks/", p)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Dir reads a release from a local directory (release.json at its top).
func Dir(dir string) (*Release, error) {
	b, err := os.ReadFile(filepath.Join(dir, "release.json"))
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("release directory: %w", err))
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, err
	}
	return &Release{Manifest: *m, Dir: dir}, nil
}
