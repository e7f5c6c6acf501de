package reconcile

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/verify"
)

// switchVerifier verifies every image with the status and digest it is set to.
type switchVerifier struct {
	status verify.Status
	digest string
}

func (s *switchVerifier) VerifyAll(_ context.Context, refs []string) ([]verify.Result, error) {
	var out []verify.Result
	for _, r := range refs {
		out = append(out, verify.Result{Ref: r, Status: s.status, Digest: s.digest, Pinned: r + "@" + s.digest, Signers: []string{"release-key"}})
	}
	return out, nil
}

// The daemon's no-op cycles reuse the policies' report, keyed on what the document is made from instead of the
// document itself. Reusing a report for a changed document would let a release past the policies, so every
// input is changed in turn: each must be evaluated anew, to the report a fresh engine gives this cycle's
// document, and only the unchanged cycle after it is answered from memory. The policy echoes the whole input
// document, so a report reused for another document shows.
func TestFlowReevaluatesEveryChange(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	file := writeRelease(t, root, "s3cret-1")
	pdir := t.TempDir()
	echo := func(prefix string) {
		src := "package main\n\nwarn contains msg if {\n\tmsg := concat(\"\", [\"" + prefix + "\", json.marshal(input)])\n}\n"
		if err := os.WriteFile(filepath.Join(pdir, "echo.rego"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	echo("v1 ")
	popts := policy.Options{NoDefault: true, Dirs: []string{pdir}}
	engine := policy.New(popts)
	sig := &switchVerifier{status: verify.Verified, digest: digest}
	f := &Flow{Load: &MemoLoader{Loader: LoadFunc(compose.Load)}, Verify: sig, Policy: engine, PolicyMode: policy.ModeWarn,
		Input: policy.InputOptions{Environment: "staging"}, Observe: fakeObserver{}}
	o := compose.Options{Files: []string{file}, Stack: "shop", Env: []string{"MODE=fast"}, WorkDir: filepath.Dir(file),
		Root: root, Strict: true, NameKey: []byte("key-1"), Environment: "staging"}

	run := func(what string) (string, int) {
		t.Helper()
		c := f.Run(ctx, o)
		if c.Err != nil {
			t.Fatalf("%s: %v", what, c.Err)
		}
		in := f.Input
		in.Signatures = PolicySignatures(c.Signatures)
		fresh, err := policy.New(popts).Evaluate(ctx, policy.NewInput(c.Wanted, in))
		if err != nil {
			t.Fatal(err)
		}
		got := c.Decisions.Decisions[0].Message
		if want := fresh.Decisions[0].Message; got != want {
			t.Fatalf("%s: the report is not that of this cycle's document:\n got %s\nwant %s", what, got, want)
		}
		return got, engine.Memoized()
	}
	last, memo := run("first cycle")
	changes := []struct {
		name   string
		change func()
		same   bool // the document itself does not change, only what it is made from
	}{
		{"a compose file", func() {
			b, _ := os.ReadFile(file)
			os.WriteFile(file, bytes.Replace(b, []byte("${TAG:-1}"), []byte("${TAG:-2}"), 1), 0o644)
		}, false},
		{"another file of the release", func() { os.WriteFile(filepath.Join(root, "release.json"), []byte(`{"v": 2}`), 0o644) }, true},
		{"a variable", func() { o.Env = []string{"MODE=slow"} }, false},
		{"the allowed registries", func() { f.Input.AllowedRegistries = []string{"registry.example"} }, false},
		{"a grant", func() { f.Input.Grants = []policy.Grant{{Rule: "latest", Stack: "shop", Service: "web"}} }, false},
		{"a grant for another stack", func() {
			f.Input.Grants = append(f.Input.Grants, policy.Grant{Rule: "root", Stack: "other", Service: "web"})
		}, true},
		{"the signature's status", func() { sig.status = verify.Warned }, false},
		{"the digest a tag resolves to", func() {
			sig.digest = "sha256:" + string(bytes.Repeat([]byte("b"), 64))
		}, false},
		{"the policies", func() { echo("v2 ") }, false},
	}
	for _, ch := range changes {
		ch.change()
		got, m := run(ch.name)
		if m != memo {
			t.Errorf("%s: answered from memory", ch.name)
		}
		if !ch.same && got == last {
			t.Errorf("%s: the document did not change; the test does not test it", ch.name)
		}
		again, m2 := run(ch.name + ", unchanged since")
		if m2 != m+1 || again != got {
			t.Errorf("%s, unchanged since: memoized %d (want %d), same report %v", ch.name, m2-m, 1, again == got)
		}
		last, memo = again, m2
	}
}

// The loaded stack is shared between cycles (MemoLoader): pinning images makes a copy, and a cycle leaves the
// memoized stack as a fresh load makes it; the same pins give the same copy.
func TestFlowNeverChangesTheLoadedStack(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	file := writeRelease(t, root, "s3cret-1")
	m := &MemoLoader{Loader: LoadFunc(compose.Load)}
	sig := &switchVerifier{status: verify.Verified, digest: digest}
	f := &Flow{Load: m, Verify: sig, Policy: policy.New(policy.Options{}), PolicyMode: policy.ModeWarn, Observe: fakeObserver{}}
	o := compose.Options{Files: []string{file}, Stack: "shop", Env: []string{}, WorkDir: filepath.Dir(file), Root: root, Strict: true}
	fresh, err := compose.Load(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	image := func(c *Cycle) string { return c.Wanted.Services[0].Spec.TaskTemplate.ContainerSpec.Image }
	first := f.Run(ctx, o)
	second := f.Run(ctx, o)
	if first.Err != nil || second.Err != nil {
		t.Fatal(first.Err, second.Err)
	}
	if image(first) != "registry.example/web:1@"+digest || first.Wanted != second.Wanted {
		t.Fatalf("pinned image %s; the same copy: %v", image(first), first.Wanted == second.Wanted)
	}
	sig.digest = "sha256:" + string(bytes.Repeat([]byte("c"), 64))
	third := f.Run(ctx, o)
	if third.Err != nil || image(third) != "registry.example/web:1@"+sig.digest || image(first) != "registry.example/web:1@"+digest {
		t.Fatalf("re-pinned: %s, the first cycle's now %s, err %v", image(third), image(first), third.Err)
	}
	loaded, err := m.Load(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := m.Stats(); h != 3 || !reflect.DeepEqual(loaded, fresh) {
		t.Fatalf("hits %d; the memoized stack after three cycles equals a fresh load: %v", h, reflect.DeepEqual(loaded, fresh))
	}
}

// inputKey names the options by every field, in Go syntax: a field of a kind fmt prints by address (a
// pointer, a func, a channel) would name a changed option as the same one. A new field fails here until
// inputKey is checked for it; every field changes the key.
func TestInputKeyCoversEveryOption(t *testing.T) {
	key := [32]byte{1}
	base := inputKey(key, policy.InputOptions{})
	typ := reflect.TypeFor[policy.InputOptions]()
	for i := range typ.NumField() {
		field := typ.Field(i)
		var o policy.InputOptions
		v := reflect.ValueOf(&o).Elem().Field(i)
		if !fill(v) {
			t.Errorf("InputOptions.%s (%s): inputKey cannot name it by value", field.Name, field.Type)
			continue
		}
		if inputKey(key, o) == base {
			t.Errorf("InputOptions.%s: the key does not change with it", field.Name)
		}
	}
	if inputKey([32]byte{}, policy.InputOptions{Environment: "x"}) != (policy.Key{}) {
		t.Error("an unnamed stack got a key")
	}
	if inputKey([32]byte{2}, policy.InputOptions{}) == base {
		t.Error("the stack's key does not change the input's")
	}
}

// fill sets v to a value other than its zero value, made only of kinds fmt prints by value; false when v
// holds another kind.
func fill(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(1)
	case reflect.Slice:
		e := reflect.New(v.Type().Elem()).Elem()
		if !fill(e) {
			return false
		}
		v.Set(reflect.Append(reflect.MakeSlice(v.Type(), 0, 1), e))
	case reflect.Map:
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		if !fill(k) || !fill(e) {
			return false
		}
		v.Set(reflect.MakeMap(v.Type()))
		v.SetMapIndex(k, e)
	case reflect.Struct:
		for i := range v.NumField() {
			if !v.Type().Field(i).IsExported() || !fill(v.Field(i)) {
				return false
			}
		}
	default:
		return false
	}
	return true
}
