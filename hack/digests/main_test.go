package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func runDigests(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	if errOut.Len() > 0 {
		t.Logf("stderr: %s", errOut.String())
	}
	return code, out.String()
}

// Against an in-process registry: one reference whose tag still points at its digest, one whose tag moved
// since, one whose digest does not exist.
func TestDigests(t *testing.T) {
	reg := testenv.Registry(t)
	okDigest := testenv.PushRandom(t, reg+"/ok:1")
	oldDigest := testenv.PushRandom(t, reg+"/moved:1")
	newDigest := testenv.PushRandom(t, reg+"/moved:1") // the tag moves on
	if oldDigest == newDigest {
		t.Fatal("two random images with the same digest")
	}
	okRef := reg + "/ok:1@" + okDigest
	movedRef := reg + "/moved:1@" + oldDigest
	missingRef := reg + "/ok:1@sha256:" + strings.Repeat("0", 64)

	repo := t.TempDir()
	write(t, filepath.Join(repo, "stacks/x/compose.yaml"), `services:
  a:
    image: `+okRef+`
  b:
    image: "`+movedRef+`"
  c:
    image: ${REGISTRY}/c:latest
  d:
    image: postgres:16
`)
	write(t, filepath.Join(repo, "images/y/Dockerfile"), `# syntax=docker/dockerfile:1
ARG BASE=`+missingRef+`
FROM ${BASE}
FROM --platform=$BUILDPLATFORM `+okRef+` AS build
`)

	code, out := runDigests(t, "-repo", repo)
	// Sorted by reference; okRef appears twice (compose file and Dockerfile) and is checked once.
	want := "moved   " + movedRef + " (tag now at " + newDigest + ")\n" +
		"missing " + missingRef + "\n" +
		"ok      " + okRef + "\n"
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	if code != 1 {
		t.Errorf("exit code %d, want 1 (a digest is missing)", code)
	}

	// Without the missing digest a moved tag is only a note, unless -strict.
	if err := os.RemoveAll(filepath.Join(repo, "images")); err != nil {
		t.Fatal(err)
	}
	if code, out := runDigests(t, "-repo", repo); code != 0 {
		t.Errorf("exit code %d, want 0 (a moved tag is a note):\n%s", code, out)
	}
	if code, out := runDigests(t, "-repo", repo, "-strict"); code != 1 {
		t.Errorf("-strict: exit code %d, want 1:\n%s", code, out)
	}
}

// TestRepositoryPins: `make check-digests` covers every third-party image of the repository's stacks (every
// service image not built by the repository, ${REGISTRY}/...) and the pinned bases of its Dockerfiles, and each
// of those is pinned by digest (a tag alone would not be checked).
func TestRepositoryPins(t *testing.T) {
	root := filepath.Join("..", "..")
	refs, err := pinnedRefs(root)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, r := range refs {
		have[r] = true
	}
	stacks, err := filepath.Glob(filepath.Join(root, "stacks", "*", "compose*.yaml"))
	if err != nil || len(stacks) == 0 {
		t.Fatalf("no compose files under stacks/: %v", err)
	}
	images := 0
	for _, f := range stacks {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Services map[string]struct{ Image string }
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for name, s := range doc.Services {
			if s.Image == "" || strings.HasPrefix(s.Image, "${REGISTRY}/") {
				continue
			}
			images++
			if !strings.Contains(s.Image, "@sha256:") {
				t.Errorf("%s: service %s: image %s is not pinned by digest", f, name, s.Image)
			} else if !have[s.Image] {
				t.Errorf("%s: service %s: image %s is not among the references check-digests checks", f, name, s.Image)
			}
		}
	}
	for _, want := range []string{"trinodb/trino:", "kafbat/kafka-ui:", "prom/prometheus:", "nginx:", "postgres:"} {
		found := false
		for _, r := range refs {
			found = found || strings.Contains(r, want)
		}
		if !found {
			t.Errorf("no %s reference among %v", want, refs)
		}
	}
	dockerfiles, _ := filepath.Glob(filepath.Join(root, "images", "*", "Dockerfile"))
	for _, f := range dockerfiles {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if _, ref, ok := strings.Cut(line, "_IMAGE="); ok && strings.HasPrefix(line, "ARG ") && strings.Contains(ref, "@sha256:") && !have[ref] {
				t.Errorf("%s: %s is not among the references check-digests checks", f, ref)
			}
		}
	}
	t.Logf("%d third-party service images, %d references checked", images, len(refs))
}
