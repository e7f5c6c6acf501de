package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/sabeiro/sawmill/internal/discover"
	"github.com/sabeiro/sawmill/internal/pipeline"
)

// FuzzConfig reads pipegen.yaml through loadConfig (viper, UnmarshalExact, Validate) as every pipegen
// command does, and builds the child pipeline of a small repository (internal/pipeline's mono test repo,
// every image rebuilt) with what it accepts. No panic; an error names the file; an accepted configuration
// validates again and renders the same bytes twice.
func FuzzConfig(f *testing.F) {
	for _, p := range []string{"../../pipegen.yaml", "../../internal/pipeline/defaults/pipegen.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		// The default file `pipegen init` writes is a template.
		b = bytes.ReplaceAll(b, []byte("{{.Registry}}"), []byte("registry.example.com/sawmill"))
		f.Add(bytes.ReplaceAll(b, []byte("{{.DefaultBranch}}"), []byte("main")))
	}
	f.Add([]byte(testConfig))
	f.Add([]byte("registry: registry.example.com/sawmill\nenvironments:\n  - {name: staging, tier: staging, when: automatic}\n  - {name: production, tier: production, protected: true}\nsigning: {mode: key, key_variable: COSIGN_PRIVATE_KEY, format: legacy}\nbuilder: buildkit\nmax_needs: 1\n"))
	f.Add([]byte("registry: registry.example.com/sawmill\nenvironments: [{name: staging, tier: staging}, {name: staging, tier: prod}]\ntemplates: ../x\nmax_needs: 0\n"))
	repo, err := discover.Scan("../../internal/pipeline/testdata/repos/mono", discover.Options{})
	if err != nil {
		f.Fatal(err)
	}
	var decisions []discover.Decision
	for _, im := range repo.Images {
		decisions = append(decisions, discover.Decision{Image: im.Name, Rebuild: true, Reason: "fuzz"})
	}
	a := &app{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }, log: slog.New(slog.DiscardHandler)}
	dir := f.TempDir()
	file := filepath.Join(dir, "pipegen.yaml")
	f.Fuzz(func(t *testing.T, b []byte) {
		// One process runs the inputs one at a time, so the shared file is safe to rewrite.
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
		rf := repoFlags{}
		fs := pflag.NewFlagSet("fuzz", pflag.ContinueOnError)
		rf.add(fs)
		rf.repo = dir
		cfg, _, err := a.loadConfig(&rf, fs)
		if err != nil {
			if !strings.HasPrefix(err.Error(), file+": ") {
				t.Fatalf("error does not name %s: %v", file, err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("an accepted configuration does not validate again: %v", err)
		}
		pl, err := pipeline.Build(repo, decisions, cfg)
		if err != nil {
			return
		}
		again, err := pipeline.Build(repo, decisions, cfg)
		if err != nil || !bytes.Equal(pl.Bytes(), again.Bytes()) {
			t.Fatalf("the same configuration renders differently (%v)", err)
		}
	})
}
