package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/stack"
)

// renderDoc is what `agent render` prints for a stack: the policies' input document.
func renderDoc(t *testing.T, st *stack.Stack) []byte {
	t.Helper()
	b, err := json.Marshal(policy.NewInput(st, policy.InputOptions{Environment: "staging"}))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// Every file of the parity corpus renders the same document from the cache as from a fresh load; the ones
// that read a .env or an env_file are not cached.
func TestLoadCachedEqualsLoadOnTheParityCorpus(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join("..", "..", "cmd", "agent", "testdata", "parity")
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	// The corpus takes its registry and external names from the environment (the parity test's): write them
	// into copies, so that the environment supplies nothing and the loads may be cached.
	literal := strings.NewReplacer("${REG}", "registry.example:5000", "${EXTERNAL_SECRET}", "ext_secret",
		"${EXTERNAL_CONFIG}", "ext_config", "${EXTERNAL_NETWORK}", "ext_network", "${EXTERNAL_VOLUME}", "ext_volume")
	cached := 0
	for _, d := range dirs {
		src := filepath.Join(root, d.Name())
		copyDir := filepath.Join(t.TempDir(), d.Name())
		if err := os.CopyFS(copyDir, os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"compose.yaml", "override.yaml", "production.yaml"} {
			if b, err := os.ReadFile(filepath.Join(copyDir, name)); err == nil {
				if err := os.WriteFile(filepath.Join(copyDir, name), []byte(literal.Replace(string(b))), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		files := []string{filepath.Join(copyDir, "compose.yaml")}
		if d.Name() == "07-override-files" {
			files = append(files, filepath.Join(copyDir, "override.yaml"), filepath.Join(copyDir, "production.yaml"))
		}
		o := Options{Files: files, Stack: "parity", Env: []string{}, WithoutValues: true}
		want, werr := Load(ctx, o)
		cache := t.TempDir()
		for round := 0; round < 2; round++ {
			got, hit, err := LoadCached(ctx, o, cache)
			if (err == nil) != (werr == nil) {
				t.Fatalf("%s: LoadCached err %v, Load err %v", d.Name(), err, werr)
			}
			if err != nil {
				if hit || len(entries(t, cache)) != 0 {
					t.Fatalf("%s: a failed load was cached", d.Name())
				}
				break
			}
			if !bytes.Equal(renderDoc(t, got), renderDoc(t, want)) {
				t.Fatalf("%s (round %d, hit %t): the document differs from a fresh load's:\n%s\n%s", d.Name(), round, hit, renderDoc(t, got), renderDoc(t, want))
			}
			if round == 1 && hit {
				cached++
			}
			switch d.Name() {
			case "19-dotenv", "20-env-file":
				if hit || len(entries(t, cache)) != 0 {
					t.Fatalf("%s: cached a load that read values from another file", d.Name())
				}
			}
		}
	}
	if cached < 20 {
		t.Fatalf("only %d of %d corpus files were answered from the cache", cached, len(dirs))
	}
	t.Logf("%d of %d corpus files cached", cached, len(dirs))
}

// The cache never holds a value from outside the compose files: a load to which a variable supplied a value,
// or whose bare environment key the environment could fill, is not kept; secret contents are not kept; and
// every input that changes the result changes the entry.
func TestLoadCachedKeepsNoValues(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cache := filepath.Join(t.TempDir(), "cache")
	const secret = "s3cret-value-4711"
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token.txt", secret)
	compose := "services:\n  web:\n    image: registry.example/web:${TAG:-1}\n    environment: [FROM_ENV]\n    secrets: [token]\nsecrets:\n  token: {file: ./token.txt}\n"
	write("compose.yaml", compose)
	o := Options{Files: []string{filepath.Join(dir, "compose.yaml")}, Stack: "shop", WithoutValues: true}

	load := func(env ...string) (*stack.Stack, bool) {
		t.Helper()
		oc := o
		oc.Env = env
		st, hit, err := LoadCached(ctx, oc, cache)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Load(ctx, oc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(renderDoc(t, st), renderDoc(t, want)) {
			t.Fatalf("env %v: cached document differs from a fresh load's", env)
		}
		return st, hit
	}
	// The environment could supply values: nothing is cached.
	for _, env := range [][]string{{"TAG=2"}, {"FROM_ENV=" + secret}, {"COMPOSE_PROJECT_NAME=x"}} {
		load(env...)
		load(env...)
		if n := entries(t, cache); len(n) != 0 {
			t.Fatalf("env %v: cached %v", env, n)
		}
	}
	// Nothing from the environment: cached, and the second load is a hit.
	if _, hit := load("PATH=/usr/bin"); hit {
		t.Fatal("first load was a hit")
	}
	st, hit := load("PATH=/usr/bin", "HOME=/root")
	if !hit {
		t.Fatal("second load of unchanged input missed the cache")
	}
	if len(st.Secrets) != 1 || st.Secrets[0].Data != nil {
		t.Fatalf("cached secret carries data: %+v", st.Secrets)
	}
	for _, name := range entries(t, cache) {
		b, _ := os.ReadFile(filepath.Join(cache, name))
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("cache entry %s holds the secret's value", name)
		}
		if fi, _ := os.Stat(filepath.Join(cache, name)); fi.Mode().Perm() != 0o600 {
			t.Fatalf("cache entry mode %v", fi.Mode())
		}
	}
	if fi, _ := os.Stat(cache); fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache directory mode %v", fi.Mode())
	}

	// Changed inputs miss: the secret file gone (a warning now), the compose file, an option.
	os.Remove(filepath.Join(dir, "token.txt"))
	st, hit = load()
	if hit || len(st.Warnings) == 0 {
		t.Fatalf("secret file removed: hit %t, warnings %v", hit, st.Warnings)
	}
	write("token.txt", secret)
	if _, hit := load(); hit {
		t.Fatal("secret file back: the entry (made without it) answered")
	}
	if _, hit := load(); !hit {
		t.Fatal("secret file back, unchanged since: missed")
	}
	write("compose.yaml", strings.Replace(compose, "web:${TAG:-1}", "web:${TAG:-3}", 1))
	if st, hit := load(); hit || !strings.HasSuffix(st.Services[0].Spec.TaskTemplate.ContainerSpec.Image, ":3") {
		t.Fatalf("compose file changed: hit %t", hit)
	}
	oc := o
	oc.Profiles = []string{"x"}
	if _, hit, _ := LoadCached(ctx, oc, cache); hit {
		t.Fatal("another profile hit the entry")
	}
	// A load with values and no name key never uses the cache.
	values := Options{Files: o.Files, Stack: "shop"}
	before := len(entries(t, cache))
	for range 2 {
		if _, hit, err := LoadCached(ctx, values, cache); hit || err != nil {
			t.Fatalf("values without a name key: hit %t, err %v", hit, err)
		}
	}
	if len(entries(t, cache)) != before {
		t.Fatal("values without a name key: an entry was written")
	}
	// With the swarm's name key (apply): kept without the contents; a changed secret file is a miss.
	keyed := Options{Files: o.Files, Stack: "shop", NameKey: []byte("swarm-name-key")}
	fresh, err := Load(ctx, keyed)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		st, hit, err := LoadCached(ctx, keyed, cache)
		if err != nil || hit != (i == 1) {
			t.Fatalf("name key, load %d: hit %t, err %v", i, hit, err)
		}
		if !bytes.Equal(renderDoc(t, st), renderDoc(t, fresh)) || st.Secrets[0].Name != fresh.Secrets[0].Name {
			t.Fatalf("name key, load %d: differs from a fresh load", i)
		}
		if hit && st.Secrets[0].Data != nil {
			t.Fatal("a cached secret has data")
		}
		if !hit && !bytes.Equal(st.Secrets[0].Data, []byte(secret)) {
			t.Fatal("a loaded secret lost its data")
		}
	}
	for _, name := range entries(t, cache) {
		if b, _ := os.ReadFile(filepath.Join(cache, name)); bytes.Contains(b, []byte(secret)) {
			t.Fatalf("cache entry %s holds the secret's value", name)
		}
	}
	write("token.txt", secret+"-rotated")
	st, hit, err = func() (*stack.Stack, bool, error) { return LoadCached(ctx, keyed, cache) }()
	if err != nil || hit || st.Secrets[0].Name == fresh.Secrets[0].Name {
		t.Fatalf("rotated secret: hit %t, name %s (was %s), err %v", hit, st.Secrets[0].Name, fresh.Secrets[0].Name, err)
	}
	if _, hit, _ := LoadCached(ctx, Options{Files: o.Files, Stack: "shop", NameKey: []byte("another-key")}, cache); hit {
		t.Fatal("another name key hit the entry")
	}
	write("token.txt", secret)

	// A .env next to the files: the cache is not used.
	write(".env", "OTHER=1\n")
	before = len(entries(t, cache))
	if _, hit := load(); hit || len(entries(t, cache)) != before {
		t.Fatal("a .env next to the files: the cache was used")
	}
}
