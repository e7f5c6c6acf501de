package reconcile

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/stack"
)

// countingLoad is compose.Load, counted.
type countingLoad struct{ n *int }

func (c countingLoad) Load(ctx context.Context, o compose.Options) (*stack.Stack, error) {
	*c.n++
	return compose.Load(ctx, o)
}

func writeRelease(t *testing.T, dir, secret string) string {
	t.Helper()
	p := filepath.Join(dir, "stacks", "shop", "compose.yaml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	y := "services:\n  web:\n    image: registry.example/web:${TAG:-1}\n    environment: {MODE: \"${MODE:-plain}\"}\n    secrets: [token]\n" +
		"secrets:\n  token: {file: ./token.txt}\n"
	if err := os.WriteFile(p, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "token.txt"), []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The daemon's loader answers an unchanged release from memory with a stack equal to a fresh load, the same
// stack each time (shared: the flow never changes it, TestFlowNeverChangesTheLoadedStack); any changed input
// (a file's content, a variable, the name key, the environment) loads anew.
func TestMemoLoaderReusesOnlyUnchangedInputs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	file := writeRelease(t, root, "s3cret-1")
	n := 0
	m := &MemoLoader{Loader: countingLoad{&n}}
	o := compose.Options{Files: []string{file}, Stack: "shop", Env: []string{"MODE=fast"}, WorkDir: filepath.Dir(file),
		Root: root, Strict: true, NameKey: []byte("key-1"), Environment: "staging"}

	first, err := m.Load(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	second, err := m.Load(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("unchanged inputs loaded %d times, want 1", n)
	}
	fresh, err := compose.Load(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(second, fresh) || !reflect.DeepEqual(first, fresh) {
		t.Fatalf("memoized stack differs from a fresh load:\n%+v\n%+v", second, fresh)
	}
	if first != second {
		t.Fatal("unchanged inputs: a new stack, want the memoized one")
	}
	_, k1, _ := m.LoadKeyed(ctx, o)
	if k1 == ([32]byte{}) {
		t.Fatal("a memoized load has no key")
	}

	changes := map[string]func(o *compose.Options){
		"variable value": func(o *compose.Options) { o.Env = []string{"MODE=slow"} },
		"variable added": func(o *compose.Options) { o.Env = []string{"MODE=fast", "TAG=2"} },
		"name key":       func(o *compose.Options) { o.NameKey = []byte("key-2") },
		"environment":    func(o *compose.Options) { o.Environment = "production" },
		"strict":         func(o *compose.Options) { o.Strict = false },
		"without values": func(o *compose.Options) { o.WithoutValues = true },
		"profiles":       func(o *compose.Options) { o.Profiles = []string{"debug"} },
	}
	for name, change := range changes {
		before := n
		oc := o
		change(&oc)
		got, err := m.Load(ctx, oc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n != before+1 {
			t.Errorf("%s: not loaded anew", name)
			continue
		}
		want, _ := compose.Load(ctx, oc)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: stack differs from a fresh load", name)
		}
		// and back: the entry now holds the changed inputs, so the original ones load again
		if _, err := m.Load(ctx, o); err != nil || n != before+2 {
			t.Errorf("%s: back to the original inputs: loads %d, err %v", name, n-before, err)
		}
	}

	// A changed file anywhere in the release loads anew (then memoizes the new content).
	for name, change := range map[string]func(){
		"secret file":    func() { writeRelease(t, root, "s3cret-2") },
		"unrelated file": func() { os.WriteFile(filepath.Join(root, "release.json"), []byte("{}"), 0o644) },
	} {
		before := n
		change()
		got, err := m.Load(ctx, o)
		if err != nil || n != before+1 {
			t.Fatalf("%s: loads %d, err %v; want loaded anew", name, n-before, err)
		}
		want, _ := compose.Load(ctx, o)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: stack differs from a fresh load", name)
		}
		if _, err := m.Load(ctx, o); err != nil || n != before+1 {
			t.Errorf("%s: unchanged since: loads %d", name, n-before)
		}
	}

	// A release that changes while it loads is not memoized and has no key: the next cycle loads it again.
	before := n
	changing := &MemoLoader{Loader: LoadFunc(func(ctx context.Context, o compose.Options) (*stack.Stack, error) {
		n++
		if n == before+1 {
			os.WriteFile(filepath.Join(root, "release.json"), []byte(`{"changed": true}`), 0o644)
		}
		return compose.Load(ctx, o)
	})}
	if _, k, err := changing.LoadKeyed(ctx, o); err != nil || k != ([32]byte{}) {
		t.Fatalf("changed under the load: key %x, err %v; want the zero key", k, err)
	}
	if _, k, err := changing.LoadKeyed(ctx, o); err != nil || k == ([32]byte{}) || n != before+2 {
		t.Fatalf("after a change under the load: %d loads, key %x, err %v; want loaded again, named", n-before, k, err)
	}

	// Unconfined loads (the command line's) and loads that report interpolated values are never memoized.
	before = n
	free := o
	free.Root = ""
	m.Load(ctx, free)
	m.Load(ctx, free)
	hook := o
	hook.Interpolated = func(string) {}
	m.Load(ctx, hook)
	if n != before+3 {
		t.Errorf("unconfined or hooked loads: %d loads, want 3", n-before)
	}
	if h, _ := m.Stats(); h < 2 {
		t.Errorf("hits = %d", h)
	}
}
