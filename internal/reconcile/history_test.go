package reconcile

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/stack"
)

// dirSource serves a release directory; its key is the directory's commit, as source.Local does.
type dirSource struct {
	mu  sync.Mutex
	dir string
}

func (s *dirSource) set(dir string) { s.mu.Lock(); s.dir = dir; s.mu.Unlock() }

func (s *dirSource) Latest(context.Context) (*source.Release, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return source.Local{Path: s.dir}.Latest(context.Background())
}

// writeKeptRelease writes a release of stack shop whose web service runs image.
func writeKeptRelease(t *testing.T, commit, image string) string {
	t.Helper()
	dir := t.TempDir()
	b, err := manifest.Encode(&manifest.Release{SchemaVersion: 1, Commit: commit, Pipeline: manifest.Pipeline{ID: 7, URL: "https://gitlab.example/p/-/pipelines/7"},
		Stacks: map[string]manifest.Stack{"shop": {Files: []string{"stacks/shop/compose.yaml"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "stacks/shop"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "release.json"), string(b))
	writeTestFile(t, filepath.Join(dir, "stacks/shop/compose.yaml"), "image: "+image+"\n")
	return dir
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// historyLoop is a loop over a dirSource whose loader reads the image from the release's compose file, so
// what runs follows the release applied.
func historyLoop(t *testing.T, stateDir string, src *dirSource, keep int) (*Loop, *fixture) {
	t.Helper()
	fx := newFixture("unused", policy.ModeEnforce)
	fx.flow.Load = LoadFunc(func(_ context.Context, o compose.Options) (*stack.Stack, error) {
		b, err := os.ReadFile(o.Files[0])
		if err != nil {
			return nil, err
		}
		return wantedStack(strings.TrimSpace(strings.TrimPrefix(string(b), "image:"))), nil
	})
	l := &Loop{Environment: "staging", Source: src, Flow: fx.flow, StateFile: filepath.Join(stateDir, StateFileName),
		HistoryDir: filepath.Join(stateDir, HistoryDirName), RequestFile: filepath.Join(stateDir, RequestFileName), HistoryKeep: keep,
		Interval: time.Minute, Metrics: &recorder{}, Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	return l, fx
}

// image runs in stack shop after the loop's last cycle (the image its applier was given).
func ranImage(l *Loop) string {
	v := l.View(context.Background())
	if len(v.Stacks) != 1 || len(v.Stacks[0].Services) != 1 {
		return ""
	}
	return v.Stacks[0].Services[0].Image
}

func TestHistoryKeepsTheLastReleasesAndTheirFiles(t *testing.T) {
	state := t.TempDir()
	src := &dirSource{}
	l, _ := historyLoop(t, state, src, 2)
	for _, c := range []string{"aaaaaaa1", "bbbbbbb2", "ccccccc3"} {
		src.set(writeKeptRelease(t, c, "registry.example/web:"+c))
		if rec := l.Cycle(context.Background()); rec.Outcome != outcome.Success {
			t.Fatalf("release %s: %+v", c, rec)
		}
		// An unchanged release adds nothing.
		l.Cycle(context.Background())
	}
	h := l.History()
	if len(h) != 2 || h[0].Release != "commit-ccccccc3" || h[1].Release != "commit-bbbbbbb2" {
		t.Fatalf("history %+v, want the last two releases, newest first", h)
	}
	if !h[0].Kept || h[0].Pipeline != "https://gitlab.example/p/-/pipelines/7" || !slices.Equal(h[0].Images, []string{"registry.example/web:ccccccc3@" + digest}) {
		t.Fatalf("newest entry %+v", h[0])
	}
	// The copies: the two kept releases, nothing of the trimmed one, and nothing else.
	entries, _ := os.ReadDir(filepath.Join(state, HistoryDirName))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{HistoryName("commit-bbbbbbb2"), HistoryName("commit-ccccccc3")}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("history directory %v, want %v", names, want)
	}
	if b, err := os.ReadFile(filepath.Join(state, HistoryDirName, HistoryName("commit-bbbbbbb2"), "stacks/shop/compose.yaml")); err != nil || !strings.Contains(string(b), "web:bbbbbbb2") {
		t.Fatalf("kept compose file: %q %v", b, err)
	}
	// agent history reads the same from the state file.
	saved, err := ReadSaved(state)
	if err != nil || len(saved.History) != 2 || saved.History[0].Release != "commit-ccccccc3" {
		t.Fatalf("saved history %+v %v", saved.History, err)
	}
}

func TestTrimHistoryKeepsThePinnedCopy(t *testing.T) {
	dir := t.TempDir()
	var h []HistoryEntry
	for _, r := range []string{"r5", "r4", "r3", "r2", "r1"} {
		h = append(h, HistoryEntry{Release: r, Kept: true})
		if err := os.MkdirAll(filepath.Join(dir, HistoryName(r)), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	got := trimHistory(dir, h, 3, &Pin{Release: "r1"})
	if len(got) != 3 || got[0].Release != "r5" || got[2].Release != "r3" {
		t.Fatalf("trimmed to %+v", got)
	}
	for r, exists := range map[string]bool{"r5": true, "r3": true, "r2": false, "r1": true} {
		if _, err := os.Stat(filepath.Join(dir, HistoryName(r))); (err == nil) != exists {
			t.Errorf("copy of %s exists %v, want %v", r, err == nil, exists)
		}
	}
}

func TestFindRelease(t *testing.T) {
	h := []HistoryEntry{
		{Release: "deployment-4", Commit: "dddddddd11", Outcome: outcome.Failed},
		{Release: "deployment-3", Commit: "cccccccc11", Outcome: outcome.Success},
		{Release: "deployment-3", Commit: "cccccccc11", Outcome: outcome.Failed},
		{Release: "deployment-2", Commit: "bbbbbbbb11", Outcome: outcome.Success},
	}
	if e, err := FindRelease(h, ""); err != nil || e.Release != "deployment-2" {
		t.Fatalf("default: %+v %v, want the previous successful release deployment-2", e, err)
	}
	if e, err := FindRelease(h, "cccccccc"); err != nil || e.Release != "deployment-3" {
		t.Fatalf("by commit: %+v %v", e, err)
	}
	if _, err := FindRelease(h, "ccc"); err == nil {
		t.Fatal("a commit prefix under 7 characters matched")
	}
	if _, err := FindRelease(h[:2], ""); err == nil {
		t.Fatal("one successful release has no previous one")
	}
}

// A rollback pins the environment: the pin survives a restart and holds while the source offers the
// release that was current when it was set; a newer one lifts it.
func TestRollbackPinSurvivesRestartAndLifts(t *testing.T) {
	state := t.TempDir()
	src := &dirSource{}
	l, _ := historyLoop(t, state, src, 5)
	relA := writeKeptRelease(t, "aaaaaaa1", "registry.example/web:a")
	src.set(relA)
	l.Cycle(context.Background())
	src.set(writeKeptRelease(t, "bbbbbbb2", "registry.example/web:b"))
	l.Cycle(context.Background())
	if got := ranImage(l); got != "registry.example/web:b@"+digest {
		t.Fatalf("after B runs %s", got)
	}
	// The release's own directory may be gone by then (the source keeps only the newest).
	if err := os.RemoveAll(relA); err != nil {
		t.Fatal(err)
	}

	req := &Request{Action: ActionRollback, Reason: "B breaks checkout"}
	if err := SubmitRequest(state, req); err != nil {
		t.Fatal(err)
	}
	if err := SubmitRequest(state, &Request{Action: ActionUnpin}); err == nil {
		t.Fatal("a second request was accepted while one is pending")
	}
	rec := l.Cycle(context.Background())
	if rec.Outcome != outcome.Success || rec.Release != "commit-aaaaaaa1" || ranImage(l) != "registry.example/web:a@"+digest {
		t.Fatalf("rollback cycle %+v runs %s", rec, ranImage(l))
	}
	saved, _ := ReadSaved(state)
	if a := saved.Answer; a == nil || a.ID != req.ID || a.Outcome != outcome.Success {
		t.Fatalf("answer %+v", saved.Answer)
	}
	if p := saved.Pin; p == nil || p.Release != "commit-aaaaaaa1" || p.Over != "commit-bbbbbbb2" || p.Reason != "B breaks checkout" {
		t.Fatalf("pin %+v", saved.Pin)
	}
	if h := l.History(); h[0].Release != "commit-aaaaaaa1" || !h[0].Rollback {
		t.Fatalf("history %+v, want the rollback first", h)
	}

	// A restart: the pin holds, B is not rolled out again.
	l2, _ := historyLoop(t, state, src, 5)
	for range 2 {
		if rec := l2.Cycle(context.Background()); rec.Release != "commit-aaaaaaa1" {
			t.Fatalf("pinned cycle after a restart: %+v", rec)
		}
	}
	if l2.Pinned() == nil || ranImage(l2) != "registry.example/web:a@"+digest {
		t.Fatalf("pin %+v, runs %s", l2.Pinned(), ranImage(l2))
	}

	// A newer release lifts the pin.
	src.set(writeKeptRelease(t, "ccccccc3", "registry.example/web:c"))
	if rec := l2.Cycle(context.Background()); rec.Release != "commit-ccccccc3" || l2.Pinned() != nil {
		t.Fatalf("newer release: %+v, pin %+v", rec, l2.Pinned())
	}
	if saved, _ := ReadSaved(state); saved.Pin != nil {
		t.Fatalf("the lifted pin stayed in the state file: %+v", saved.Pin)
	}

	// Rollback to a release not in the history: answered invalid, nothing pinned.
	req = &Request{Action: ActionRollback, To: "deployment-99"}
	if err := SubmitRequest(state, req); err != nil {
		t.Fatal(err)
	}
	l2.Cycle(context.Background())
	if saved, _ := ReadSaved(state); saved.Answer == nil || saved.Answer.ID != req.ID || saved.Answer.Outcome != outcome.Invalid || saved.Pin != nil {
		t.Fatalf("unknown release: answer %+v pin %+v", saved.Answer, saved.Pin)
	}

	// Unpin.
	if err := SubmitRequest(state, &Request{Action: ActionRollback, To: "bbbbbbb2"}); err != nil {
		t.Fatal(err)
	}
	l2.Cycle(context.Background())
	if p := l2.Pinned(); p == nil || p.Release != "commit-bbbbbbb2" {
		t.Fatalf("pin %+v, want B", p)
	}
	if err := SubmitRequest(state, &Request{Action: ActionUnpin}); err != nil {
		t.Fatal(err)
	}
	if rec := l2.Cycle(context.Background()); l2.Pinned() != nil || rec.Release != "commit-ccccccc3" {
		t.Fatalf("after unpin: %+v, pin %+v", rec, l2.Pinned())
	}
}

// /status's JSON keeps the record's fields at the top level, adds the view, and carries no secret value.
func TestViewJSONShape(t *testing.T) {
	state := t.TempDir()
	src := &dirSource{}
	src.set(writeKeptRelease(t, "aaaaaaa1", "registry.example/web:a"))
	l, fx := historyLoop(t, state, src, 5)
	const secret = "s3cret-value-of-a-variable"
	l.Redact.Add(secret)
	fx.eval.warn = "web has DB_PASSWORD=" + secret + " in plain text"
	l.Cycle(context.Background())
	b, err := json.Marshal(l.View(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), secret) {
		t.Fatalf("a secret value in the view: %s", b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "release", "commit", "outcome", "fingerprint", "environment", "running", "stacks", "cycles", "history", "view_key"} {
		if _, ok := m[k]; !ok {
			t.Errorf("/status has no %q: %s", k, b)
		}
	}
	svc := m["stacks"].([]any)[0].(map[string]any)["services"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{"name": "shop_web", "image": "registry.example/web:a@" + digest, "digest": digest, "signature": "verified",
		"running": 0.0, "desired": 0.0, "health": "unknown", "drift_put_back": 0.0} {
		if svc[k] != want {
			t.Errorf("service %s = %v, want %v", k, svc[k], want)
		}
	}
	if w := svc["warnings"].([]any); len(w) != 1 || !strings.Contains(w[0].(string), "<redacted>") {
		t.Errorf("warnings %v, want the policy's warning, redacted", w)
	}
	if s := svc["signers"].([]any); len(s) != 1 || s[0] != "release-key" {
		t.Errorf("signers %v", s)
	}
	// Deterministic: the same state gives the same bytes.
	b2, _ := json.Marshal(l.View(context.Background()))
	if string(b) != string(b2) {
		t.Fatalf("two views of one state differ:\n%s\n%s", b, b2)
	}
}
