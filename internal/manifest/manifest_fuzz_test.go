package manifest_test

import (
	"bytes"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/stack"
)

// A release as `pipegen release` writes it (docs/release.md), with two environments and a reused image.
const sampleRelease = `{
  "schema_version": 1,
  "project": "sawmill/platform",
  "commit": "4f6c0e6d1f0c8c8e5d7b7e1c2b2a9f0e6d1c3b4a",
  "ref": "main",
  "pipeline": {"id": 1234, "url": "https://gitlab.com/sawmill/platform/-/pipelines/1234"},
  "registry": "registry.gitlab.com/sawmill/platform",
  "channel": "release-main",
  "images": {
    "go_ingest": {
      "repository": "registry.gitlab.com/sawmill/platform/go_ingest",
      "tag": "4f6c0e6d1f0c8c8e5d7b7e1c2b2a9f0e6d1c3b4a",
      "digest": "sha256:6a0c1e0f5b4c7d2e9a8b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081",
      "rebuilt": true,
      "ref": "registry.gitlab.com/sawmill/platform/go_ingest:4f6c0e6d1f0c8c8e5d7b7e1c2b2a9f0e6d1c3b4a@sha256:6a0c1e0f5b4c7d2e9a8b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
    },
    "live_py": {
      "repository": "registry.gitlab.com/sawmill/platform/live_py",
      "tag": "release-main",
      "digest": "sha256:91be0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7",
      "rebuilt": false,
      "ref": "registry.gitlab.com/sawmill/platform/live_py:release-main@sha256:91be0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7"
    }
  },
  "stacks": {
    "platform": {
      "files": ["stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"],
      "environments": {
        "production": ["stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"],
        "staging": ["stacks/platform/compose.yaml"]
      }
    }
  }
}
`

// FuzzParse feeds release.json bytes to Parse. Whatever it accepts is safe to use: every digest is
// canonical and pinned by its ref, every file stays under stacks/ of the release directory, every
// environment has files, and the canonical encoding reads back to the same release (and the same bytes).
func FuzzParse(f *testing.F) {
	f.Add([]byte(sampleRelease))
	f.Add([]byte(`{"schema_version":1,"images":{},"stacks":{"shop":{"files":["stacks/shop/compose.yaml"]}}}`))
	f.Add([]byte(`{"schema_version":1,"stacks":{"shop":{"files":["stacks/shop/compose.yaml"],"environments":{"production":[]}}}}`))
	f.Add([]byte(`{"schema_version":1,"stacks":{"shop":{"files":["stacks/../../etc/passwd"]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := manifest.Parse(b)
		if err != nil {
			if r != nil {
				t.Fatalf("Parse returned a release and an error: %v", err)
			}
			if k := fault.KindOf(err); k != fault.Invalid {
				t.Fatalf("error is %v, want invalid input: %v", k, err)
			}
			if !strings.HasPrefix(err.Error(), manifest.FileName+": ") {
				t.Fatalf("error does not name %s: %v", manifest.FileName, err)
			}
			return
		}
		if len(b) > manifest.MaxSize {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if r.SchemaVersion != manifest.SchemaVersion {
			t.Fatalf("accepted schema_version %d", r.SchemaVersion)
		}
		for name, img := range r.Images {
			if !stack.IsDigest(img.Digest) {
				t.Fatalf("images.%s.digest %q accepted", name, img.Digest)
			}
			if !strings.HasSuffix(img.Ref, "@"+img.Digest) {
				t.Fatalf("images.%s.ref %q accepted without its digest", name, img.Ref)
			}
		}
		if len(r.Stacks) == 0 {
			t.Fatal("a release without stacks accepted")
		}
		const dir = "/release"
		for _, name := range r.StackNames() {
			st := r.Stacks[name]
			if len(st.Files) == 0 {
				t.Fatalf("stack %s: no files accepted", name)
			}
			for _, p := range st.AllFiles() {
				if !strings.HasPrefix(p, "stacks/") || path.IsAbs(p) || path.Clean(p) != p || strings.Contains(p, `\`) ||
					slices.Contains(strings.Split(p, "/"), "..") {
					t.Fatalf("stack %s: file %q accepted", name, p)
				}
			}
			envs := []string{""}
			for env := range st.Environments {
				envs = append(envs, env)
			}
			for _, env := range envs {
				files, err := r.Files(dir, name, env)
				if err != nil {
					t.Fatalf("stack %s environment %q: %v", name, env, err)
				}
				if len(files) == 0 {
					t.Fatalf("stack %s environment %q: no files", name, env)
				}
				for _, f := range files {
					rel, err := filepath.Rel(dir, f)
					if err != nil || !strings.HasPrefix(rel, "stacks"+string(filepath.Separator)) {
						t.Fatalf("stack %s environment %q: file %q leaves %s", name, env, f, dir)
					}
				}
			}
		}
		enc, err := manifest.Encode(r)
		if err != nil {
			t.Fatalf("Encode of an accepted release: %v", err)
		}
		again, err := manifest.Parse(enc)
		if err != nil {
			t.Fatalf("Parse(Encode(release)): %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(r, again) {
			t.Fatalf("Parse(Encode(release)) differs:\n%#v\n%#v", r, again)
		}
		enc2, err := manifest.Encode(again)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("Encode is not canonical (%v):\n%s\n%s", err, enc, enc2)
		}
	})
}
