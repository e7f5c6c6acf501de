// Package release builds and writes a Sawmill release: the image-to-digest map, the commit
// and pipeline it came from, and every stack's compose files with each repository image
// pinned to repo:tag@sha256:digest (format: docs/release.md).
//
// In: the images rebuilt in this pipeline with their digests (from the sign jobs' dotenv
// reports), the images reused from an earlier release (with the digests `pipegen generate`
// read from it, or resolved here from the channel tags), the stacks found by internal/discover,
// and a [Registry]. Out: a [Release] and its files, written atomically to a directory; and
// [Publish], which moves the ref's channel (the channel tags, then the channel record that
// later pipelines diff against) by compare-and-swap. [OCI.ReadRecord] reads a channel record.
//
// It imports the standard library, internal/discover, internal/manifest (the release.json
// schema it writes, which the agent reads), internal/stack (the digest pattern),
// go.yaml.in/yaml/v3 and go-containerregistry; it is used only by cmd/pipegen (`pipegen release`,
// `generate`, `plan`).
package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/discover"
	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/stack"
)

// The release.json schema is internal/manifest's; these names keep the writer's code short.
type (
	// Release is release.json.
	Release = manifest.Release
	// Pipeline identifies the GitLab pipeline that made the release.
	Pipeline = manifest.Pipeline
	// Image is one image of the release.
	Image = manifest.Image
	// Stack is one stack of the release.
	Stack = manifest.Stack
	// Base names the release a release reuses images from.
	Base = manifest.Base
)

// Registry resolves tags and moves them. See NewRegistry for the real one.
type Registry interface {
	// Digest returns the manifest digest ref points at; errors.Is(err, ErrNotFound) when the
	// tag does not exist.
	Digest(ctx context.Context, ref string) (string, error)
	// Tag points repository:tag at repository@digest.
	Tag(ctx context.Context, repository, digest, tag string) error
	// ReadRecord reads a channel record (RecordRef); errors.Is(err, ErrNotFound) when absent.
	ReadRecord(ctx context.Context, ref string) (Record, error)
	// WriteRecord pushes a channel record and returns its digest.
	WriteRecord(ctx context.Context, ref string, releaseJSON []byte, commit string) (string, error)
}

// ErrNotFound is returned by Registry.Digest for a missing tag.
var ErrNotFound = errors.New("not found")

// Input is what a release is made of.
type Input struct {
	Root          string // repository root (stack files are read from here)
	Registry      string // registry path of the images, <registry>/<image>
	Tag           string // tag of rebuilt images (the commit SHA)
	Project       string
	Commit        string
	Ref           string // branch or tag name
	DefaultBranch string
	PipelineID    int64
	PipelineURL   string
	Rebuilt       []string          // images built in this pipeline
	Reused        []string          // images taken from an earlier release
	Digests       map[string]string // digest of every rebuilt image, and of reused images resolved by generate
	BaseCommit    string            // the commit of the release reused images come from ("" unknown)
	BaseChannel   string            // the channel that release was read from; the tag of reused images
	Stacks        []discover.Stack
	Environments  []string // configured environments (for Stack.Environments)
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Slug is GitLab's CI_COMMIT_REF_SLUG of a ref: lower case, every character other than
// a-z and 0-9 replaced by '-', at most 63 bytes, no leading or trailing '-'.
func Slug(ref string) string {
	b := []byte(strings.ToLower(ref))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return strings.Trim(string(b), "-")
}

// ChannelTag is the moving tag that names the latest released digest of an image on a ref.
func ChannelTag(ref string) string { return "release-" + Slug(ref) }

// Make builds the release: rebuilt images with their digests, reused images resolved from
// the ref's release tag or, when the ref has none yet, the default branch's.
func Make(ctx context.Context, in Input, reg Registry) (*Release, map[string][]byte, error) {
	if in.Commit == "" || in.Ref == "" {
		return nil, nil, errors.New("commit and ref are required (CI_COMMIT_SHA, CI_COMMIT_REF_NAME)")
	}
	rel := &Release{
		SchemaVersion: manifest.SchemaVersion,
		Project:       in.Project,
		Commit:        in.Commit,
		Ref:           in.Ref,
		Pipeline:      Pipeline{ID: in.PipelineID, URL: in.PipelineURL},
		Registry:      in.Registry,
		Channel:       ChannelTag(in.Ref),
		Images:        map[string]Image{},
		Stacks:        map[string]Stack{},
	}
	if in.BaseCommit != "" {
		rel.Base = &Base{Commit: in.BaseCommit, Channel: in.BaseChannel}
	}
	seen := map[string]bool{}
	for _, name := range in.Rebuilt {
		if seen[name] {
			return nil, nil, fmt.Errorf("image %q listed twice", name)
		}
		seen[name] = true
		d := in.Digests[name]
		if !stack.IsDigest(d) {
			return nil, nil, fmt.Errorf("image %s was rebuilt but its digest %q is not sha256:<64 hex> (dotenv variable missing?)", name, d)
		}
		repo := in.Registry + "/" + name
		rel.Images[name] = Image{Repository: repo, Tag: in.Tag, Digest: d, Rebuilt: true, Ref: repo + ":" + in.Tag + "@" + d}
	}
	channels := []string{ChannelTag(in.Ref)}
	if in.DefaultBranch != "" && ChannelTag(in.DefaultBranch) != channels[0] {
		channels = append(channels, ChannelTag(in.DefaultBranch))
	}
	for _, name := range in.Reused {
		if seen[name] {
			return nil, nil, fmt.Errorf("image %q listed twice", name)
		}
		seen[name] = true
		repo := in.Registry + "/" + name
		if d, ok := in.Digests[name]; ok && d != "" {
			// Resolved once, by generate, from the record of the base release.
			if !stack.IsDigest(d) {
				return nil, nil, fmt.Errorf("image %s is reused but its digest %q is not sha256:<64 hex>", name, d)
			}
			tag := in.BaseChannel
			if tag == "" {
				tag = channels[0]
			}
			rel.Images[name] = Image{Repository: repo, Tag: tag, Digest: d, Ref: repo + ":" + tag + "@" + d}
			continue
		}
		img, err := resolve(ctx, reg, repo, channels)
		if err != nil {
			return nil, nil, fmt.Errorf("image %s is reused: %w", name, err)
		}
		rel.Images[name] = img
	}
	files := map[string][]byte{}
	for _, st := range in.Stacks {
		s := Stack{}
		paths := []string{st.File}
		for _, o := range st.Overrides {
			paths = append(paths, o.File)
		}
		for _, p := range paths {
			raw, err := os.ReadFile(filepath.Join(in.Root, filepath.FromSlash(p)))
			if err != nil {
				return nil, nil, fmt.Errorf("stack %s: %w", st.Name, err)
			}
			pinned, err := Pin(raw, in.Registry, rel.Images)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", p, err)
			}
			files[p] = pinned
			s.Files = append(s.Files, p)
		}
		if len(in.Environments) > 0 {
			s.Environments = map[string][]string{}
			for _, env := range in.Environments {
				fs := []string{st.File}
				for _, o := range st.Overrides {
					if o.Env == env {
						fs = append(fs, o.File)
					}
				}
				s.Environments[env] = fs
			}
		}
		rel.Stacks[st.Name] = s
	}
	b, err := manifest.Encode(rel)
	if err != nil {
		return nil, nil, err
	}
	files[manifest.FileName] = b
	return rel, files, nil
}

func resolve(ctx context.Context, reg Registry, repo string, channels []string) (Image, error) {
	if reg == nil {
		return Image{}, errors.New("no registry to resolve release tags")
	}
	var tried []string
	for _, tag := range channels {
		ref := repo + ":" + tag
		d, err := reg.Digest(ctx, ref)
		if errors.Is(err, ErrNotFound) {
			tried = append(tried, ref)
			continue
		}
		if err != nil {
			return Image{}, fmt.Errorf("resolve %s: %w", ref, err)
		}
		if !stack.IsDigest(d) {
			return Image{}, fmt.Errorf("resolve %s: unexpected digest %q", ref, d)
		}
		return Image{Repository: repo, Tag: tag, Digest: d, Ref: ref + "@" + d}, nil
	}
	return Image{}, fmt.Errorf("no earlier release: none of %s exists (rebuild everything with --base %s)", strings.Join(tried, ", "), discover.ZeroSHA)
}

// ErrChannelMoved is returned by Publish when the channel no longer points where this
// pipeline found it: another pipeline on the same ref published in between.
var ErrChannelMoved = errors.New("channel moved")

// Publish moves the channel: every image's channel tag to the image's digest (and tags every
// reused image with the release's commit, as the rebuilt ones already are), then the channel
// record (RecordRef) to releaseJSON, so the next pipeline on this ref diffs against this
// release and reuses its digests.
//
// It is a compare-and-swap on the record, the channel's state: expect is the digest of the
// channel record this pipeline started from ("" when the ref had none). When the record is
// elsewhere now, nothing is moved and the error wraps ErrChannelMoved; the record is checked
// again right before it is replaced. The channel tags follow the record and are not compared:
// a publish that failed after moving them (before the record) would otherwise block the ref
// for good. The registry API has no conditional write, so the check and the writes are
// separate requests; the release job's resource_group serialises the pipelines of one ref,
// and the check catches a pipeline that published while this one ran.
func Publish(ctx context.Context, rel *Release, releaseJSON []byte, reg Registry, expect string) error {
	recRef := RecordRef(rel.Registry, rel.Channel)
	cur, err := currentRecord(ctx, reg, recRef)
	if err != nil {
		return err
	}
	if cur.Digest != expect {
		return movedError(recRef, expect, cur)
	}
	for _, n := range slices.Sorted(maps.Keys(rel.Images)) {
		img := rel.Images[n]
		if err := reg.Tag(ctx, img.Repository, img.Digest, rel.Channel); err != nil {
			return fmt.Errorf("tag %s:%s -> %s: %w", img.Repository, rel.Channel, img.Digest, err)
		}
		// Every image of the release answers to the release's commit, reused ones included
		// (rebuilt ones were pushed under it, or, with signing in the parent pipeline, under
		// <commit>-p<pipeline>), e.g. the tools image `pipegen init` names.
		if (!img.Rebuilt || img.Tag != rel.Commit) && tagRE.MatchString(rel.Commit) {
			if err := reg.Tag(ctx, img.Repository, img.Digest, rel.Commit); err != nil {
				return fmt.Errorf("tag %s:%s -> %s: %w", img.Repository, rel.Commit, img.Digest, err)
			}
		}
	}
	// The record is the commit point: check once more right before moving it.
	again, err := currentRecord(ctx, reg, recRef)
	if err != nil {
		return err
	}
	if again.Digest != expect {
		return movedError(recRef, expect, again)
	}
	if _, err := reg.WriteRecord(ctx, recRef, releaseJSON, rel.Commit); err != nil {
		return fmt.Errorf("move %s: %w", recRef, err)
	}
	return nil
}

// currentRecord reads a channel record; an absent one is Record{} without error.
func currentRecord(ctx context.Context, reg Registry, ref string) (Record, error) {
	rec, err := reg.ReadRecord(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		return Record{}, nil
	}
	if err != nil {
		return Record{}, fmt.Errorf("channel record: %w", err)
	}
	return rec, nil
}

func movedError(ref, expect string, cur Record) error {
	now := "absent"
	if cur.Release != nil {
		now = fmt.Sprintf("%s (commit %s, pipeline %d)", cur.Digest, cur.Release.Commit, cur.Release.Pipeline.ID)
	}
	return fmt.Errorf("%s is now %s, but this pipeline started from %s: %w: another pipeline on this ref published in between; "+
		"this pipeline's release is not published (rerun the pipeline to release on top of the newer one)", ref, now, orNone(expect), ErrChannelMoved)
}

func orNone(d string) string {
	if d == "" {
		return "nothing"
	}
	return d
}

// Write writes files (relative slash paths) into dir, replacing dir only when everything
// was written.
func Write(dir string, files map[string][]byte) error {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, p := range slices.Sorted(maps.Keys(files)) {
		dst := filepath.Join(tmp, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dst), err)
		}
		if err := os.WriteFile(dst, files[p], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("replace %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, dir, err)
	}
	return nil
}

// Pin rewrites the image of every service that names a repository image (the rule of
// discover.MatchImage: <registry prefix>/<image>[:tag|@digest]) to that image's
// repository:tag@digest. Other images, comments and the rest of the file are kept.
func Pin(compose []byte, registry string, images map[string]Image) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(compose, &doc); err != nil {
		return nil, fmt.Errorf("parse compose file: %w", err)
	}
	if len(doc.Content) == 0 {
		return compose, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, errors.New("compose file is not a mapping")
	}
	services := value(root, "services")
	if services != nil && services.Kind == yaml.MappingNode {
		for i := 1; i < len(services.Content); i += 2 {
			svc := services.Content[i]
			if svc.Kind != yaml.MappingNode {
				continue
			}
			img := value(svc, "image")
			if img == nil || img.Kind != yaml.ScalarNode {
				continue
			}
			name, ok := discover.MatchImage(img.Value, []string{registry}, func(n string) bool { _, ok := images[n]; return ok })
			if !ok {
				continue
			}
			img.Value = images[name].Ref
			img.Style = 0
		}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("encode compose file: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode compose file: %w", err)
	}
	return b.Bytes(), nil
}

func value(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}
