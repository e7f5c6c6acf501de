// Package manifest is the release.json schema (docs/release.md): the one definition that the writer
// (`pipegen release`, internal/release) and the reader (the agent's sources, internal/source) share.
//
// In: the bytes of a release.json. Out: a checked *Release (Parse), or an error classified fault.Invalid
// that names the field. It also says which files of a release belong to a stack and an environment.
//
// It imports internal/fault and internal/stack (the digest pattern) only.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// SchemaVersion is the version of release.json this package writes and reads.
const SchemaVersion = 1

// FileName is the name of the manifest inside a release directory.
const FileName = "release.json"

// MaxSize is the largest release.json Parse reads (a release of a thousand images is far below it); readers
// stop reading one byte after it.
const MaxSize = 4 << 20

// Release is release.json.
type Release struct {
	SchemaVersion int              `json:"schema_version"`
	Project       string           `json:"project"`
	Commit        string           `json:"commit"`
	Ref           string           `json:"ref"`
	Pipeline      Pipeline         `json:"pipeline"`
	Registry      string           `json:"registry"`
	Channel       string           `json:"channel"`
	Images        map[string]Image `json:"images"`
	Stacks        map[string]Stack `json:"stacks"`
	// Base is the release this one reuses images from; omitted when unknown. Optional, added
	// after schema_version 1 was published: readers must not require it.
	Base *Base `json:"base,omitempty"`
}

// Base names the earlier release a release reuses images from.
type Base struct {
	Commit  string `json:"commit"`  // the commit of that release: the base of the pipeline's diff
	Channel string `json:"channel"` // the channel it was read from (release-<ref slug>)
}

// Pipeline identifies the GitLab pipeline that made the release.
type Pipeline struct {
	ID  int64  `json:"id"`
	URL string `json:"url"`
}

// Image is one image of the release.
type Image struct {
	Repository string `json:"repository"` // <registry>/<name>
	Tag        string `json:"tag"`        // the tag pushed (rebuilt) or resolved (reused)
	Digest     string `json:"digest"`     // sha256:<64 hex>
	Rebuilt    bool   `json:"rebuilt"`    // built and signed in this pipeline
	Ref        string `json:"ref"`        // repository:tag@digest, as pinned in the compose files
}

// Stack is one stack of the release.
type Stack struct {
	// Files are the compose files, relative to the release directory, base file first and then the
	// environment overrides sorted by environment.
	Files []string `json:"files"`
	// Environments maps an environment to the files to load for it (base + its override).
	Environments map[string][]string `json:"environments,omitempty"`
}

// Encode is the canonical form of r: indented JSON with sorted keys and a final newline, so the same
// release gives the same bytes.
func Encode(r *Release) ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", FileName, err)
	}
	return append(b, '\n'), nil
}

// Parse reads and checks release.json: at most MaxSize bytes, one JSON object and nothing after it, a
// version this agent knows, digests in canonical form, refs that pin them, at least one stack, no empty
// file list (for the stack or any of its environments), and file paths that stay inside stacks/.
func Parse(b []byte) (*Release, error) {
	if len(b) > MaxSize {
		return nil, fault.InvalidErr(fmt.Errorf("%s: more than %d bytes", FileName, MaxSize))
	}
	var m Release
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("%s: %w", FileName, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fault.InvalidErr(fmt.Errorf("%s: data after the JSON object", FileName))
	}
	if m.SchemaVersion != SchemaVersion {
		return nil, fault.InvalidErr(fmt.Errorf("%s: schema_version %d: this agent reads version %d", FileName, m.SchemaVersion, SchemaVersion))
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(m.Images)) {
		img := m.Images[name]
		if !stack.IsDigest(img.Digest) {
			errs = append(errs, fmt.Errorf("images.%s.digest %q is not sha256:<64 hex>", name, img.Digest))
		}
		if !strings.HasSuffix(img.Ref, "@"+img.Digest) {
			errs = append(errs, fmt.Errorf("images.%s.ref %q does not pin images.%s.digest", name, img.Ref, name))
		}
	}
	if len(m.Stacks) == 0 {
		errs = append(errs, errors.New("stacks: the release has no stack"))
	}
	for _, name := range slices.Sorted(maps.Keys(m.Stacks)) {
		st := m.Stacks[name]
		if len(st.Files) == 0 {
			errs = append(errs, fmt.Errorf("stacks.%s.files is empty", name))
		}
		for _, env := range slices.Sorted(maps.Keys(st.Environments)) {
			if len(st.Environments[env]) == 0 {
				errs = append(errs, fmt.Errorf("stacks.%s.environments.%s is empty", name, env))
			}
		}
		if len(st.Environments) == 0 && st.Environments != nil {
			// `"environments": {}` means what an omitted key means (no environment configured), as Encode
			// writes it.
			st.Environments = nil
			m.Stacks[name] = st
		}
		for _, f := range st.AllFiles() {
			if err := checkPath(f); err != nil {
				errs = append(errs, fmt.Errorf("stacks.%s: %w", name, err))
			}
		}
	}
	if len(errs) > 0 {
		return nil, fault.InvalidErr(fmt.Errorf("%s: %w", FileName, errors.Join(errs...)))
	}
	return &m, nil
}

// StackNames returns the release's stacks in name order.
func (r *Release) StackNames() []string { return slices.Sorted(maps.Keys(r.Stacks)) }

// Files returns the compose files of stack for environment env, in load order, as paths under dir.
func (r *Release) Files(dir, stackName, env string) ([]string, error) {
	st, ok := r.Stacks[stackName]
	if !ok {
		return nil, fault.InvalidErr(fmt.Errorf("release %s has no stack %q", r.Commit, stackName))
	}
	files := st.Files
	if env != "" && st.Environments != nil {
		f, ok := st.Environments[env]
		if !ok {
			return nil, fault.InvalidErr(fmt.Errorf("release %s: stack %s has no environment %q", r.Commit, stackName, env))
		}
		files = f
	}
	out := make([]string, len(files))
	for i, f := range files {
		out[i] = filepath.Join(dir, filepath.FromSlash(f))
	}
	return out, nil
}

// AllFiles returns every file the stack names, for any environment, once each: the base list first, then
// the environments' in environment order.
func (s Stack) AllFiles() []string {
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
	add(s.Files)
	for _, env := range slices.Sorted(maps.Keys(s.Environments)) {
		add(s.Environments[env])
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
