package discover

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzImageSpec scans a repository of two images (base, app) whose images/app/image.yaml is the input.
// Scan never panics; an error names the file; what it accepts stays inside the repository: watch paths
// and the build context are clean relative paths that do not climb out, and depends_on names an image.
func FuzzImageSpec(f *testing.F) {
	f.Add([]byte("context: .\nwatch: [go.mod, go.sum]\n"))
	f.Add([]byte("watch: [shared/proto, 'docs/*.md']\nbuild_args: {VERSION: \"1.2.3\", GOFLAGS: \"-trimpath -mod=readonly\"}\ntarget: final\nplatforms: [linux/arm64, linux/amd64]\ndepends_on: [base]\n"))
	f.Add([]byte("watch: [..]\n"))
	f.Add([]byte("context: ../..\n"))
	f.Add([]byte("depends_on: [app]\n"))
	root := f.TempDir()
	for name, content := range map[string]string{
		"images/base/Dockerfile": "FROM debian:bookworm-slim\n",
		"images/app/Dockerfile":  "FROM ${REGISTRY}/base:latest AS build\nRUN make\nFROM scratch\nCOPY --from=build /app /app\n",
	} {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	spec := filepath.Join(root, "images", "app", ImageSpec)
	const file = "images/app/" + ImageSpec
	f.Fuzz(func(t *testing.T, b []byte) {
		// One process runs the inputs one at a time, so the shared repository is safe to rewrite.
		if err := os.WriteFile(spec, b, 0o644); err != nil {
			t.Fatal(err)
		}
		repo, err := Scan(root, Options{})
		if err != nil {
			if !strings.Contains(err.Error(), file) {
				t.Fatalf("error does not name %s: %v", file, err)
			}
			return
		}
		app, ok := repo.Image("app")
		if !ok {
			t.Fatal("image app not found")
		}
		inside := func(field, p string) {
			if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
				t.Fatalf("%s: %q accepted", field, p)
			}
		}
		for _, w := range app.Watch {
			inside("watch", w)
			if w == "." {
				t.Fatalf("watch: %q accepted", w)
			}
		}
		inside("context", app.Context)
		if !slices.IsSorted(app.Watch) || !slices.IsSorted(app.Platforms) || !slices.IsSortedFunc(app.BuildArgs, func(a, b BuildArg) int { return strings.Compare(a.Name, b.Name) }) {
			t.Fatalf("not sorted: %+v", app)
		}
		for _, d := range app.DependsOn {
			if d != "base" {
				t.Fatalf("depends_on: %q accepted", d)
			}
		}
	})
}
