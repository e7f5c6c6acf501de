// Package internal_test keeps the layout of ../shared/DESIGN.md true: which of this project's packages each
// package may import. The data flows one way; stages do not import each other sideways; only the
// orchestration package (reconcile) imports every stage; test support is imported by tests only.
package internal_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/sabeiro/sawmill/"

// allowed lists, for every package of the project, the project's packages its non-test files may import.
// cmd/* may import anything but test support (and cmd/agent not internal/sopsfile: cmd/sawmill-sops does);
// internal/testing/... and hack/... may import anything.
var allowed = map[string][]string{
	"internal/fault":    {},
	"internal/stack":    {},
	"internal/outcome":  {"internal/fault"},
	"internal/manifest": {"internal/fault", "internal/stack"},
	"internal/compose":  {"internal/fault", "internal/stack"},
	"internal/plan":     {"internal/fault", "internal/stack"},
	"internal/swarm":    {"internal/fault", "internal/stack", "internal/plan"},
	"internal/verify":   {"internal/fault"},
	"internal/policy":   {"internal/fault", "internal/stack", "policies"},
	"internal/source":   {"internal/fault", "internal/manifest"},
	"internal/report":   {},
	"internal/redact":   {},
	"internal/notify":   {"internal/redact"},
	"internal/sopsfile": {"internal/fault", "internal/redact"},
	"internal/reconcile": {
		"internal/compose", "internal/fault", "internal/manifest", "internal/outcome", "internal/plan", "internal/policy",
		"internal/redact", "internal/report", "internal/source", "internal/stack", "internal/swarm", "internal/verify",
	},
	"internal/status": {"internal/outcome", "internal/plan", "internal/reconcile"},
	// pipegen
	"internal/discover": {},
	"internal/pipeline": {"internal/discover"},
	"internal/release":  {"internal/discover", "internal/manifest", "internal/stack"},
	"internal/cilint":   {},
	"policies":          {},
}

func TestImportRules(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	imports := map[string]map[string]string{} // package dir -> imported project package -> file
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil && path != root {
				return filepath.SkipDir // another module (an image's)
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !strings.HasPrefix(p, module) {
				continue
			}
			if imports[rel] == nil {
				imports[rel] = map[string]string{}
			}
			file, _ := filepath.Rel(root, path)
			imports[rel][strings.TrimPrefix(p, module)] = file
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for pkg, imps := range imports {
		for imp, file := range imps {
			switch {
			case strings.HasPrefix(pkg, "internal/testing/"), strings.HasPrefix(pkg, "hack/"), strings.HasPrefix(pkg, "bench"):
				// test support and tools may use anything
			case strings.HasPrefix(imp, "internal/testing/"):
				t.Errorf("%s imports %s: test support is for tests (and hack/) only", file, imp)
			case pkg == "cmd/agent" && imp == "internal/sopsfile":
				// the SOPS library links every cloud KMS SDK: the agent runs cmd/sawmill-sops instead
				t.Errorf("%s imports %s: the agent decrypts SOPS files with its helper cmd/sawmill-sops (cmd/agent/sops.go)", file, imp)
			case strings.HasPrefix(pkg, "cmd/"):
			case strings.HasPrefix(pkg, "images/"):
				// an image's code stays inside its image
				if image := strings.Join(strings.SplitN(pkg, "/", 3)[:2], "/"); !strings.HasPrefix(imp, image+"/") {
					t.Errorf("%s imports %s: an image's code imports only its own packages", file, imp)
				}
			default:
				rules, ok := allowed[pkg]
				if !ok {
					t.Errorf("package %s is not in the import rules (internal/imports_test.go): add it, following DESIGN.md", pkg)
					continue
				}
				if !slices.Contains(rules, imp) {
					t.Errorf("%s imports %s: %s may import only %v (DESIGN.md's one-way flow)", file, imp, pkg, rules)
				}
			}
		}
	}
	for pkg := range allowed {
		if _, err := os.Stat(filepath.Join(root, pkg)); err != nil {
			t.Errorf("the import rules name %s, which does not exist", pkg)
		}
	}
}

// The environment reaches internal/ only as a value from cmd/: no product package reads the process's.
func TestNoProcessEnvironmentInInternal(t *testing.T) {
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (path == "testing" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, call := range []string{"os.Environ(", "os.Getenv(", "os.LookupEnv("} {
			if strings.Contains(string(b), call) {
				t.Errorf("internal/%s calls %s: take the environment as a value from cmd/", path, call)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
