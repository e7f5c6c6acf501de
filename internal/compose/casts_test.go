package compose

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	interp "github.com/compose-spec/compose-go/v2/interpolation"
	"github.com/compose-spec/compose-go/v2/tree"
)

// withAllCasts runs f with compose-go's whole cast table, as before usedCasts.
func withAllCasts(f func()) {
	castFilter = func(all map[tree.Path]interp.Cast, _ [][]byte) map[tree.Path]interp.Cast { return all }
	defer func() { castFilter = usedCasts }()
	f()
}

// Every file of the parity corpus, and values that only a cast turns into numbers and booleans (fed by
// variables, in an override file), load to the same document with the narrowed casts as with all of them.
func TestUsedCastsLoadTheSame(t *testing.T) {
	ctx := context.Background()
	env := []string{"REG=registry.example:5000", "EXTERNAL_SECRET=ext_secret", "EXTERNAL_CONFIG=ext_config",
		"EXTERNAL_NETWORK=ext_network", "EXTERNAL_VOLUME=ext_volume", "N=3", "RO=true", "R=4", "P=8080", "INIT=true", "BAD=three"}
	var cases [][]string
	root := filepath.Join("..", "..", "cmd", "agent", "testdata", "parity")
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		files := []string{filepath.Join(root, d.Name(), "compose.yaml")}
		if d.Name() == "07-override-files" {
			files = append(files, filepath.Join(root, d.Name(), "override.yaml"), filepath.Join(root, d.Name(), "production.yaml"))
		}
		cases = append(cases, files)
	}
	dir := t.TempDir()
	cases = append(cases, []string{
		write(t, dir, "compose.yaml", "name: casts\nservices:\n  web:\n    image: nginx\n"),
		write(t, dir, "override.yaml", `services:
  web:
    read_only: "${RO}"
    init: "${INIT}"
    healthcheck: {test: ["CMD", "/probe"], retries: "${R}"}
    ports: [{target: "${P}", published: "9000"}]
    deploy: {replicas: "${N}", update_config: {parallelism: "${N}"}}
`),
	})
	// A value no cast accepts: compose-go's cast names the field (without the cast, the schema would answer).
	cases = append(cases, []string{write(t, dir, "bad.yaml", "name: casts\nservices:\n  web:\n    image: nginx\n    deploy: {replicas: \"${BAD}\"}\n")})
	for _, files := range cases {
		o := Options{Files: files, Stack: "casts", Env: env, WithoutValues: true}
		got, gerr := Load(ctx, o)
		withAllCasts(func() {
			want, werr := Load(ctx, o)
			if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
				t.Fatalf("%v: narrowed casts: %v; all casts: %v", files, gerr, werr)
			}
			if gerr == nil && string(renderDoc(t, got)) != string(renderDoc(t, want)) {
				t.Fatalf("%v: the document differs:\n%s\nall casts:\n%s", files, renderDoc(t, got), renderDoc(t, want))
			}
		})
	}
	// The override's values were cast.
	st, err := Load(ctx, Options{Files: cases[len(cases)-2], Env: env})
	if err != nil {
		t.Fatal(err)
	}
	spec := service(t, st, "casts_web")
	if r := spec.Mode.Replicated; r == nil || r.Replicas == nil || *r.Replicas != 3 {
		t.Fatalf("replicas %+v, want 3", spec.Mode.Replicated)
	}
	if !spec.TaskTemplate.ContainerSpec.ReadOnly || spec.TaskTemplate.ContainerSpec.Healthcheck.Retries != 4 {
		t.Fatalf("read_only %t, retries %d; want true, 4", spec.TaskTemplate.ContainerSpec.ReadOnly, spec.TaskTemplate.ContainerSpec.Healthcheck.Retries)
	}
}

func TestUsedCastsKeepsWhatAFileCanUse(t *testing.T) {
	all := map[tree.Path]interp.Cast{
		"services.*.read_only":            nil,
		"services.*.deploy.replicas":      nil,
		"services.*.ulimits.*":            nil,
		"services.*.volumes.[].read_only": nil,
		"networks.*.external":             nil,
	}
	keys := func(m map[tree.Path]interp.Cast) []string {
		var out []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			out = append(out, string(k))
		}
		return out
	}
	got := keys(usedCasts(all, [][]byte{[]byte("services: {a: {ulimits: {nofile: 1}}}"), []byte("x: {read_only: true}")}))
	want := []string{"services.*.read_only", "services.*.ulimits.*", "services.*.volumes.[].read_only"}
	if !slices.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	for _, text := range []string{"include: [other.yaml]", "services: {a: {extends: b}}", `services: {a: {"repl\x69cas": 1}}`} {
		if got := usedCasts(all, [][]byte{[]byte(text)}); len(got) != len(all) {
			t.Fatalf("%q: kept %d of %d casts, want all", text, len(got), len(all))
		}
	}
}
