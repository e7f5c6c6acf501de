package discover

import (
	"context"
	"errors"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type repo = testenv.GitRepo

func newRepo(t *testing.T, files map[string]string) *repo { return testenv.NewGitRepo(t, files) }

// layout is a repository with a dependency chain base <- mid <- app, an independent tool,
// a watch path and a stack with overrides.
var layout = map[string]string{
	"pipegen.yaml":                            "registry: registry.example.com/g/p\n",
	"pipelines/build.yml":                     ".sawmill-build: {script: [true]}\n",
	"images/base/Dockerfile":                  "FROM alpine:3.22\n",
	"images/mid/Dockerfile":                   "# comment\nARG REGISTRY\nFROM --platform=$BUILDPLATFORM ${REGISTRY}/base:latest AS build\nRUN true\nFROM build\n",
	"images/app/Dockerfile":                   "ARG MID_IMAGE\nFROM ${MID_IMAGE}\n",
	"images/app/src/main.go":                  "package main\n",
	"images/tool/Dockerfile":                  "FROM registry.example.com/g/p/base@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS x\nFROM docker.io/library/golang:1.26\n",
	"images/tool/image.yaml":                  "watch: [shared/proto, 'docs/*.md']\nbuild_args: {B: '2', A: '1'}\ntarget: final\nplatforms: [linux/arm64, linux/amd64]\n",
	"images/README.md":                        "not an image\n",
	"shared/proto/x.proto":                    "syntax = \"proto3\";\n",
	"stacks/platform/compose.yaml":            "services: {}\n",
	"stacks/platform/compose.production.yaml": "services: {}\n",
	"stacks/platform/compose.staging.yaml":    "services: {}\n",
	"stacks/platform/notes.txt":               "ignored\n",
	"policies/images.rego":                    "package sawmill\n",
}

func TestScan(t *testing.T) {
	r := newRepo(t, layout)
	got, err := Scan(r.Dir, Options{Registries: []string{"registry.example.com/g/p"}})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, im := range got.Images {
		order = append(order, im.Name)
	}
	if want := []string{"base", "mid", "app", "tool"}; !reflect.DeepEqual(order, want) {
		t.Errorf("order = %v, want %v", order, want)
	}
	deps := map[string][]string{}
	for _, im := range got.Images {
		deps[im.Name] = im.DependsOn
	}
	wantDeps := map[string][]string{"base": nil, "mid": {"base"}, "app": {"mid"}, "tool": {"base"}}
	if !reflect.DeepEqual(deps, wantDeps) {
		t.Errorf("deps = %v, want %v", deps, wantDeps)
	}
	tool, _ := got.Image("tool")
	wantTool := Image{
		Name: "tool", Dir: "images/tool", Dockerfile: "images/tool/Dockerfile", Context: "images/tool",
		Watch:     []string{"docs/*.md", "shared/proto"},
		BuildArgs: []BuildArg{{"A", "1"}, {"B", "2"}},
		Target:    "final", Platforms: []string{"linux/amd64", "linux/arm64"}, DependsOn: []string{"base"},
	}
	if !reflect.DeepEqual(tool, wantTool) {
		t.Errorf("tool = %+v\nwant %+v", tool, wantTool)
	}
	wantStacks := []Stack{{Name: "platform", Dir: "stacks/platform", File: "stacks/platform/compose.yaml", Overrides: []Override{
		{"production", "stacks/platform/compose.production.yaml"}, {"staging", "stacks/platform/compose.staging.yaml"}}}}
	if !reflect.DeepEqual(got.Stacks, wantStacks) {
		t.Errorf("stacks = %+v\nwant %+v", got.Stacks, wantStacks)
	}
	if !got.Policies {
		t.Error("policies/ not found")
	}
}

func TestScanErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"no dockerfile", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/b/README": "x"}, "images/b: image directory has no Dockerfile"},
		{"cycle", map[string]string{
			"images/a/Dockerfile": "FROM ${REGISTRY}/c\n",
			"images/b/Dockerfile": "FROM ${REGISTRY}/a:1\n",
			"images/c/Dockerfile": "FROM $REGISTRY/b@sha256:00\n",
		}, "dependency cycle: a -> c -> b -> a"},
		{"declared cycle", map[string]string{
			"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "depends_on: [b]\n",
			"images/b/Dockerfile": "FROM x\n", "images/b/image.yaml": "depends_on: [a]\n",
		}, "dependency cycle: a -> b -> a"},
		{"self", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "depends_on: [a]\n"}, "images/a/image.yaml: depends_on: image \"a\" depends on itself"},
		{"unknown dep", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "depends_on: [nope]\n"}, "images/a/image.yaml: depends_on: no image \"nope\""},
		{"unknown key", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "wacth: [x]\n"}, "images/a/image.yaml: yaml: unmarshal errors:\n  line 1: field wacth not found"},
		{"bad watch", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "watch: [../etc]\n"}, "images/a/image.yaml: watch: \"../etc\" must be a path inside the repository"},
		// Found by FuzzImageSpec: a second document was ignored, and the parent directory itself was accepted.
		{"two documents", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "watch: [a]\n---\ncontext: ../\n"}, "images/a/image.yaml: more than one YAML document"},
		{"watch parent", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "watch: [.., ./../]\n"}, "images/a/image.yaml: watch: \"..\" must be a path inside the repository"},
		{"context outside", map[string]string{"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "context: ../..\n"}, "images/a/image.yaml: context: \"../..\" must be a directory inside the repository"},
		{"variable clash", map[string]string{"images/a-b/Dockerfile": "FROM x\n", "images/a_b/Dockerfile": "FROM x\n"}, "images/a_b: image names \"a-b\" and \"a_b\" both map to the variable prefix A_B"},
		{"bad name", map[string]string{"images/Bad/Dockerfile": "FROM x\n"}, "images/Bad: \"Bad\" is not a valid image name"},
		{"stack without compose", map[string]string{"stacks/s/compose.prod.yaml": "x: 1\n"}, "stacks/s: stack directory has no compose.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &repo{T: t, Dir: t.TempDir()}
			r.Write(tc.files)
			_, err := Scan(r.Dir, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// An image that builds from the module root says so in image.yaml; the default context is its directory.
func TestBuildContext(t *testing.T) {
	r := &repo{T: t, Dir: t.TempDir()}
	r.Write(map[string]string{
		"images/a/Dockerfile": "FROM x\n", "images/a/image.yaml": "context: .\n",
		"images/b/Dockerfile": "FROM x\n",
	})
	got, err := Scan(r.Dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := map[string]string{}
	for _, im := range got.Images {
		ctx[im.Name] = im.Context
	}
	if ctx["a"] != "." || ctx["b"] != "images/b" {
		t.Fatalf("contexts %v", ctx)
	}
}

func TestEmptyRepo(t *testing.T) {
	got, err := Scan(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Images) != 0 || len(got.Stacks) != 0 || got.Policies {
		t.Errorf("got %+v", got)
	}
}

func TestFromImages(t *testing.T) {
	df := "# syntax=docker/dockerfile:1\nARG X\nfrom --platform=linux/amd64 \\\n  golang:1.26 AS Build\nFROM build AS test\nFROM scratch\nCOPY --from=build /x /x\n"
	got := FromImages([]byte(df))
	if want := []string{"golang:1.26", "scratch"}; !reflect.DeepEqual(got, want) {
		t.Errorf("FromImages = %q, want %q", got, want)
	}
}

func TestMatchImage(t *testing.T) {
	is := func(n string) bool { return n == "base" || n == "go_ingest" }
	for ref, want := range map[string]string{
		"${REGISTRY}/base":                   "base",
		"$CI_REGISTRY_IMAGE/go_ingest:1":     "go_ingest",
		"reg.example.com/g/p/base@sha256:aa": "base",
		"reg.example.com/g/p/other/base:1":   "",
		"base":                               "",
		"docker.io/library/base":             "",
		"${REGISTRY}/base-extra:1":           "",
		"reg.example.com/g/pp/base":          "",
	} {
		got, ok := MatchImage(ref, []string{"reg.example.com/g/p/"}, is)
		if got != want || ok != (want != "") {
			t.Errorf("MatchImage(%q) = %q, %v; want %q", ref, got, ok, want)
		}
	}
}

func TestVarName(t *testing.T) {
	for in, want := range map[string]string{"go_ingest": "GO_INGEST", "live-py": "LIVE_PY", "a.b9": "A_B9"} {
		if got := VarName(in); got != want {
			t.Errorf("VarName(%q) = %q, want %q", in, got, want)
		}
	}
}

func names(ds []Decision, rebuild bool) []string {
	var out []string
	for _, d := range ds {
		if d.Rebuild == rebuild {
			out = append(out, d.Image)
		}
	}
	return out
}

func TestPlanWithGit(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, layout)
	first := r.Git("rev-parse", "HEAD")
	scan := func() *Repo {
		got, err := Scan(r.Dir, Options{Registries: []string{"registry.example.com/g/p"}})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	g := Git{Dir: r.Dir}
	plan := func(base string) []Decision {
		t.Helper()
		d, err := g.Diff(ctx, base, "no base")
		if err != nil {
			t.Fatal(err)
		}
		return Plan(scan(), d)
	}

	// Nothing changed: everything reused.
	if got := names(plan(first), true); got != nil {
		t.Errorf("no change: rebuilt %v", got)
	}
	// No base: everything rebuilt, with the reason.
	all := plan("")
	if got := names(all, false); got != nil {
		t.Errorf("no base: reused %v", got)
	}
	if all[0].Reason != "no base" {
		t.Errorf("reason = %q", all[0].Reason)
	}

	// A change in mid rebuilds mid and app (transitively), not base or tool.
	r.Write(map[string]string{"images/mid/Dockerfile": layout["images/mid/Dockerfile"] + "RUN echo 2\n"})
	second := r.Commit("mid")
	ds := plan(first)
	if got, want := names(ds, true), []string{"mid", "app"}; !reflect.DeepEqual(got, want) {
		t.Errorf("mid change: rebuilt %v, want %v", got, want)
	}
	for _, d := range ds {
		want := map[string]string{"base": "unchanged", "mid": "changed images/mid/Dockerfile", "app": "depends on mid", "tool": "unchanged"}[d.Image]
		if d.Reason != want {
			t.Errorf("%s: reason %q, want %q", d.Image, d.Reason, want)
		}
	}

	// A watched path rebuilds tool only; a glob watch matches too.
	r.Write(map[string]string{"shared/proto/y.proto": "x", "docs/a.md": "x", "docs/b/c.txt": "x", "images/tool/image.yaml": layout["images/tool/image.yaml"]})
	r.Commit("proto")
	if got, want := names(plan(second), true), []string{"tool"}; !reflect.DeepEqual(got, want) {
		t.Errorf("watch change: rebuilt %v, want %v", got, want)
	}
	// A change to a file outside every image rebuilds nothing.
	third := r.Git("rev-parse", "HEAD")
	r.Write(map[string]string{"README.md": "x", "stacks/platform/compose.yaml": "services: {a: {}}\n"})
	r.Commit("docs")
	if got := names(plan(third), true); got != nil {
		t.Errorf("unrelated change: rebuilt %v", got)
	}
	// pipelines/ rebuilds everything.
	fourth := r.Git("rev-parse", "HEAD")
	r.Write(map[string]string{"pipelines/build.yml": ".sawmill-build: {script: [false]}\n"})
	r.Commit("templates")
	ds = plan(fourth)
	if got := names(ds, false); got != nil {
		t.Errorf("template change: reused %v", got)
	}
	if ds[0].Reason != "changed pipelines/build.yml" {
		t.Errorf("reason = %q", ds[0].Reason)
	}
	// Deleting an image's file counts as a change.
	fifth := r.Git("rev-parse", "HEAD")
	if err := os.Remove(filepath.Join(r.Dir, "images/app/src/main.go")); err != nil {
		t.Fatal(err)
	}
	r.Commit("rm")
	if got, want := names(plan(fifth), true), []string{"app"}; !reflect.DeepEqual(got, want) {
		t.Errorf("delete: rebuilt %v, want %v", got, want)
	}
}

func TestSummarize(t *testing.T) {
	if got := summarize([]string{"a", "b", "c", "d", "e"}); got != "a, b, c (+2 more)" {
		t.Errorf("summarize = %q", got)
	}
}

func TestGitErrors(t *testing.T) {
	ctx := context.Background()
	_, err := Git{Dir: t.TempDir()}.Diff(ctx, "HEAD", "")
	if !errors.Is(err, ErrNotGit) {
		t.Errorf("not a repo: err = %v", err)
	}
	r := newRepo(t, map[string]string{"a": "b"})
	for _, base := range []string{"deadbeef", "no-such-branch", "--output=/tmp/x"} {
		_, err = Git{Dir: r.Dir}.Diff(ctx, base, "")
		if !errors.Is(err, ErrNoBase) || !strings.Contains(err.Error(), base) {
			t.Errorf("base %q: err = %v", base, err)
		}
	}
	head, err := Git{Dir: r.Dir}.Head(ctx)
	if err != nil || len(head) != 40 {
		t.Errorf("Head = %q, %v", head, err)
	}
}

func TestGitSubdirectory(t *testing.T) {
	// The repository root may be a subdirectory of the git work tree: paths are relative to it.
	r := newRepo(t, map[string]string{"sub/images/a/Dockerfile": "FROM x\n", "other/x": "1"})
	base := r.Git("rev-parse", "HEAD")
	r.Write(map[string]string{"sub/images/a/Dockerfile": "FROM y\n", "other/x": "2"})
	r.Commit("change")
	d, err := Git{Dir: filepath.Join(r.Dir, "sub")}.Diff(context.Background(), base, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"images/a/Dockerfile"}; !reflect.DeepEqual(d.Paths, want) {
		t.Errorf("paths = %v, want %v", d.Paths, want)
	}
}
