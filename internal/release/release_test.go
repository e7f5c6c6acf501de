package release

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/testing/testenv"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/sabeiro/sawmill/internal/discover"
)

// startRegistry runs go-containerregistry's in-process registry; fail makes every request
// whose path contains it answer 500.
func startRegistry(t *testing.T, fail string) string {
	t.Helper()
	reg := registry.New()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail != "" && strings.Contains(r.URL.Path, fail) {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		dst := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMakeWritePublish(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t, "")
	registryPath := host + "/team/sawmill"
	// base was released on this branch before; tool only on the default branch.
	baseDigest := testenv.PushRandom(t, registryPath+"/base:release-feature-x")
	testenv.PushRandom(t, registryPath+"/base:release-main") // older, must not win
	toolDigest := testenv.PushRandom(t, registryPath+"/tool:release-main")
	// The rebuilt images must exist for Publish to tag them.
	dApp := testenv.PushRandom(t, registryPath+"/app:abc123")
	dMid := testenv.PushRandom(t, registryPath+"/mid:abc123")

	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"stacks/platform/compose.yaml":            "# platform\nservices:\n  app:\n    image: ${REGISTRY}/app:latest # pinned by the release\n  mid:\n    image: " + registryPath + "/mid\n  db:\n    image: postgres:16\n  tool:\n    image: \"$CI_REGISTRY_IMAGE/tool:1\"\n",
		"stacks/platform/compose.production.yaml": "services:\n  app:\n    deploy:\n      replicas: 3\n",
	})
	stacks := []discover.Stack{{Name: "platform", Dir: "stacks/platform", File: "stacks/platform/compose.yaml",
		Overrides: []discover.Override{{Env: "production", File: "stacks/platform/compose.production.yaml"}}}}
	in := Input{
		Root: root, Registry: registryPath, Tag: "abc123", Project: "team/sawmill", Commit: "abc123",
		Ref: "feature/X", DefaultBranch: "main", PipelineID: 42, PipelineURL: "https://gitlab.example.com/team/sawmill/-/pipelines/42",
		Rebuilt: []string{"mid", "app"}, Reused: []string{"base", "tool"},
		Digests: map[string]string{"app": dApp, "mid": dMid}, Stacks: stacks, Environments: []string{"staging", "production"},
	}
	reg := OCI{}
	rel, files, err := Make(ctx, in, reg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Image{
		"app":  {Repository: registryPath + "/app", Tag: "abc123", Digest: dApp, Rebuilt: true, Ref: registryPath + "/app:abc123@" + dApp},
		"mid":  {Repository: registryPath + "/mid", Tag: "abc123", Digest: dMid, Rebuilt: true, Ref: registryPath + "/mid:abc123@" + dMid},
		"base": {Repository: registryPath + "/base", Tag: "release-feature-x", Digest: baseDigest, Ref: registryPath + "/base:release-feature-x@" + baseDigest},
		"tool": {Repository: registryPath + "/tool", Tag: "release-main", Digest: toolDigest, Ref: registryPath + "/tool:release-main@" + toolDigest},
	}
	if !reflect.DeepEqual(rel.Images, want) {
		t.Errorf("images = %+v\nwant %+v", rel.Images, want)
	}
	if rel.Channel != "release-feature-x" {
		t.Errorf("channel = %s", rel.Channel)
	}
	compose := string(files["stacks/platform/compose.yaml"])
	for _, s := range []string{
		"image: " + want["app"].Ref + " # pinned by the release",
		"image: " + want["mid"].Ref,
		"image: postgres:16",
		"image: " + want["tool"].Ref,
		"# platform",
	} {
		if !strings.Contains(compose, s) {
			t.Errorf("pinned compose lacks %q:\n%s", s, compose)
		}
	}

	out := filepath.Join(t.TempDir(), "release")
	writeFiles(t, out, map[string]string{"stale.txt": "from an earlier run"})
	if err := Write(out, files); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "stale.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Error("the release directory was not replaced")
	}
	raw, err := os.ReadFile(filepath.Join(out, manifest.FileName))
	if err != nil {
		t.Fatal(err)
	}
	// The round trip: what the writer wrote, the agent's reader (internal/manifest) reads back whole.
	parsed, err := manifest.Parse(raw)
	if err != nil {
		t.Fatalf("the agent's reader refuses the written release.json: %v", err)
	}
	if !reflect.DeepEqual(parsed, rel) {
		t.Errorf("release.json read back = %+v\nwritten %+v", parsed, rel)
	}
	back := *parsed
	if back.SchemaVersion != 1 || back.Commit != "abc123" || back.Pipeline.ID != 42 || back.Project != "team/sawmill" || back.Ref != "feature/X" {
		t.Errorf("release.json = %+v", back)
	}
	wantStack := Stack{
		Files:        []string{"stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"},
		Environments: map[string][]string{"production": {"stacks/platform/compose.yaml", "stacks/platform/compose.production.yaml"}, "staging": {"stacks/platform/compose.yaml"}},
	}
	if !reflect.DeepEqual(back.Stacks["platform"], wantStack) {
		t.Errorf("stack = %+v", back.Stacks["platform"])
	}
	pinnedOnDisk, err := os.ReadFile(filepath.Join(out, "stacks/platform/compose.yaml"))
	if err != nil || string(pinnedOnDisk) != compose {
		t.Errorf("compose on disk: %v", err)
	}
	// Same input, same bytes.
	_, again, err := Make(ctx, in, reg)
	if err != nil || string(again[manifest.FileName]) != string(files[manifest.FileName]) {
		t.Errorf("release.json is not deterministic: %v", err)
	}

	// Publish moves release-feature-x of every image to the released digest, and the record.
	if err := Publish(ctx, rel, files[manifest.FileName], reg, ""); err != nil {
		t.Fatal(err)
	}
	rec, err := reg.ReadRecord(ctx, RecordRef(registryPath, "release-feature-x"))
	if err != nil || rec.Release.Commit != "abc123" || rec.Release.Images["app"].Digest != dApp || !strings.HasPrefix(rec.Digest, "sha256:") {
		t.Errorf("record = %+v, %v", rec, err)
	}
	for n, img := range want {
		got, err := reg.Digest(ctx, registryPath+"/"+n+":release-feature-x")
		if err != nil || got != img.Digest {
			t.Errorf("%s:release-feature-x = %s, %v; want %s", n, got, err, img.Digest)
		}
	}
	// Reused images are tagged with the release's commit too (rebuilt ones were pushed so).
	for _, n := range []string{"base", "tool"} {
		if got, err := reg.Digest(ctx, registryPath+"/"+n+":abc123"); err != nil || got != want[n].Digest {
			t.Errorf("%s:abc123 = %s, %v; want %s", n, got, err, want[n].Digest)
		}
	}
	// The next pipeline on the branch reuses what this one released.
	in.Rebuilt, in.Reused, in.Digests = nil, []string{"app", "mid", "base", "tool"}, nil
	next, _, err := Make(ctx, in, reg)
	if err != nil {
		t.Fatal(err)
	}
	for n, img := range next.Images {
		if img.Digest != want[n].Digest || img.Rebuilt {
			t.Errorf("next release %s = %+v", n, img)
		}
	}
}

func TestMakeErrors(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t, "/v2/p/broken/")
	base := Input{Root: t.TempDir(), Registry: host + "/p", Tag: "t", Commit: "c", Ref: "main", DefaultBranch: "main"}

	in := base
	in.Rebuilt = []string{"app"}
	in.Digests = map[string]string{"app": "latest"}
	if _, _, err := Make(ctx, in, OCI{}); err == nil || !strings.Contains(err.Error(), `image app was rebuilt but its digest "latest"`) {
		t.Errorf("bad digest: %v", err)
	}

	in = base
	in.Reused = []string{"never"}
	_, _, err := Make(ctx, in, OCI{})
	if err == nil || !strings.Contains(err.Error(), "image never is reused: no earlier release: none of "+host+"/p/never:release-main exists") {
		t.Errorf("missing release tag: %v", err)
	}

	// A registry error is not "not found": it fails instead of falling back.
	in = base
	in.Ref = "feature"
	in.Reused = []string{"broken"}
	_, _, err = Make(ctx, in, OCI{})
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "resolve "+host+"/p/broken:release-feature") {
		t.Errorf("registry failure: %v", err)
	}

	in = base
	in.Commit = ""
	if _, _, err := Make(ctx, in, OCI{}); err == nil {
		t.Error("missing commit accepted")
	}
}

func TestWriteKeepsOldOnFailure(t *testing.T) {
	parent := t.TempDir()
	out := filepath.Join(parent, "release")
	writeFiles(t, out, map[string]string{"release.json": "old"})
	// A path that cannot be created (a file where a directory must go) fails before the swap.
	err := Write(out, map[string][]byte{"a": []byte("x"), "a/b": []byte("y")})
	if err == nil {
		t.Fatal("no error")
	}
	if b, _ := os.ReadFile(filepath.Join(out, "release.json")); string(b) != "old" {
		t.Error("old release was touched")
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 1 {
		t.Errorf("temporary directory left behind: %v", entries)
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{"main": "main", "Feature/X_1": "feature-x-1", "-a-": "a", strings.Repeat("a", 70): strings.Repeat("a", 63)} {
		if got := Slug(in); got != want {
			t.Errorf("Slug(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPinInvalid(t *testing.T) {
	if _, err := Pin([]byte("- a\n- b\n"), "r/p", nil); err == nil {
		t.Error("a list was accepted as a compose file")
	}
	if _, err := Pin([]byte("services: [\n"), "r/p", nil); err == nil {
		t.Error("broken YAML accepted")
	}
}

// Two pipelines on one ref started from the same channel record: the first to publish wins,
// the second fails with ErrChannelMoved and moves nothing; an old record never overwrites a
// newer one.
func TestPublishCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t, "")
	regPath := host + "/team/sawmill"
	reg := OCI{}
	dOld := testenv.PushRandom(t, regPath+"/app:c0")
	dA := testenv.PushRandom(t, regPath+"/app:ca")
	dB := testenv.PushRandom(t, regPath+"/app:cb")
	mk := func(commit, digest string) (*Release, []byte) {
		t.Helper()
		in := Input{Root: t.TempDir(), Registry: regPath, Tag: commit, Commit: commit, Ref: "main", DefaultBranch: "main",
			Rebuilt: []string{"app"}, Digests: map[string]string{"app": digest}}
		rel, files, err := Make(ctx, in, reg)
		if err != nil {
			t.Fatal(err)
		}
		return rel, files[manifest.FileName]
	}
	// The channel starts at c0.
	rel0, json0 := mk("c0", dOld)
	if err := Publish(ctx, rel0, json0, reg, ""); err != nil {
		t.Fatal(err)
	}
	start, err := reg.ReadRecord(ctx, RecordRef(regPath, "release-main"))
	if err != nil {
		t.Fatal(err)
	}
	// A second first release (expecting no record) is refused.
	if err := Publish(ctx, rel0, json0, reg, ""); !errors.Is(err, ErrChannelMoved) {
		t.Errorf("publish over an existing record expecting none: %v", err)
	}
	// Pipelines A and B both started from c0. B (newer) publishes first.
	relA, jsonA := mk("ca", dA)
	relB, jsonB := mk("cb", dB)
	if err := Publish(ctx, relB, jsonB, reg, start.Digest); err != nil {
		t.Fatal(err)
	}
	err = Publish(ctx, relA, jsonA, reg, start.Digest)
	if !errors.Is(err, ErrChannelMoved) || !strings.Contains(err.Error(), "commit cb") || !strings.Contains(err.Error(), "rerun the pipeline") {
		t.Fatalf("older pipeline publishing last: %v", err)
	}
	rec, err := reg.ReadRecord(ctx, RecordRef(regPath, "release-main"))
	if err != nil || rec.Release.Commit != "cb" {
		t.Errorf("record after the refused publish: %+v, %v", rec.Release, err)
	}
	if d, _ := reg.Digest(ctx, regPath+"/app:release-main"); d != dB {
		t.Errorf("app:release-main = %s, want B's %s (not rolled back to A's)", d, dB)
	}
	// A publish that moved the tags but failed before the record does not block the ref: the
	// record is the channel's state, and the next pipeline that started from it publishes.
	testenv.PushRandom(t, regPath+"/app:release-main")
	relC, jsonC := mk("cc", dA)
	if err := Publish(ctx, relC, jsonC, reg, rec.Digest); err != nil {
		t.Errorf("publish after a partial one: %v", err)
	}
	if now := readRecordCommit(t, ctx, reg, regPath); now != "cc" {
		t.Errorf("record after the publish: %s", now)
	}
}

func TestParseRecord(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"not json":   {"{", "release.json"},
		"version":    {`{"schema_version":2,"commit":"c"}`, "schema_version 2"},
		"no commit":  {`{"schema_version":1}`, "no commit"},
		"bad digest": {`{"schema_version":1,"commit":"c","images":{"a":{"digest":"latest"}}}`, `image a: digest "latest"`},
	} {
		if _, err := ParseRecord([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	rel, err := ParseRecord([]byte(`{"schema_version":1,"commit":"c","images":{"a":{"digest":"sha256:` + strings.Repeat("0", 64) + `"}}}`))
	if err != nil || rel.Commit != "c" {
		t.Errorf("%+v %v", rel, err)
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"schema_version":1,"commit":"c","images":{"a":{"digest":"sha256:` + strings.Repeat("0", 64) + `"}}}`))
	f.Add([]byte(`{"schema_version":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rel, err := ParseRecord(data)
		if err == nil && (rel.Commit == "" || rel.SchemaVersion != manifest.SchemaVersion) {
			t.Errorf("accepted %q", data)
		}
	})
}

func readRecordCommit(t *testing.T, ctx context.Context, reg OCI, regPath string) string {
	t.Helper()
	rec, err := reg.ReadRecord(ctx, RecordRef(regPath, "release-main"))
	if err != nil {
		t.Fatal(err)
	}
	return rec.Release.Commit
}
