package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildah runs buildah on its own storage (vfs under dir): never the machine's images.
func buildah(t *testing.T, dir string, args ...string) string {
	t.Helper()
	args = append([]string{"--storage-driver", "vfs", "--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot")}, args...)
	var out, errb bytes.Buffer
	cmd := exec.Command("buildah", args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("buildah %s: %v\n%s", strings.Join(args[6:], " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// TestToolsImage builds the tools image's content (images/sawmill-tools: pipegen and the agent, built as its
// Dockerfile builds them, the commit stamped in) into an OCI image with buildah, offline: the Dockerfile's
// base images (golang, alpine) cannot be pulled here, so the image is assembled FROM scratch from the same
// binaries. The pipegen inside the image writes a pipeline whose jobs use the tools image of its own commit,
// and this repository's pipeline builds, scans, tests and signs the tools image like every other image.
func TestToolsImage(t *testing.T) {
	if _, err := exec.LookPath("buildah"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("buildah is not installed (.ci/run installs it)")
		}
		t.Skip("buildah is not installed (apt-get install buildah)")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// The Dockerfile stamps the commit the way this test does, and the pipeline passes it.
	df, _ := os.ReadFile(filepath.Join(root, "images/sawmill-tools/Dockerfile"))
	spec, _ := os.ReadFile(filepath.Join(root, "images/sawmill-tools/image.yaml"))
	if !bytes.Contains(df, []byte("-X main.toolCommit=${SAWMILL_COMMIT}")) || !bytes.Contains(spec, []byte(`SAWMILL_COMMIT: "$CI_COMMIT_SHA"`)) {
		t.Fatal("images/sawmill-tools no longer stamps the commit with -X main.toolCommit=${SAWMILL_COMMIT} from $CI_COMMIT_SHA")
	}

	dir := t.TempDir()
	ctx := filepath.Join(dir, "ctx")
	commit := strings.Repeat("c0ffee", 6) + "c0ff"
	for _, b := range [][]string{
		{"-ldflags", "-s -w -X main.toolCommit=" + commit, "-o", filepath.Join(ctx, "pipegen"), "./cmd/pipegen"},
		{"-ldflags", "-s -w", "-o", filepath.Join(ctx, "agent"), "./cmd/agent"},
	} {
		cmd := exec.Command("go", append([]string{"build", "-mod=readonly", "-trimpath"}, b...)...)
		cmd.Dir, cmd.Env = root, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b[len(b)-1], err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(ctx, "Containerfile"), []byte("FROM scratch\nCOPY pipegen agent /usr/local/bin/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("buildah", "--storage-driver", "vfs", "--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot"), "rmi", "--all", "--force").Run()
	})
	buildah(t, dir, "bud", "-q", "-t", "localhost/sawmill-tools:"+commit, ctx)
	ctr := buildah(t, dir, "from", "localhost/sawmill-tools:"+commit)
	mnt := buildah(t, dir, "mount", ctr)
	t.Cleanup(func() {
		_ = exec.Command("buildah", "--storage-driver", "vfs", "--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot"), "rm", ctr).Run()
	})

	// pipegen init, run from the image: the generate, policy and release jobs use this very image.
	repo := t.TempDir()
	cmd := exec.Command(filepath.Join(mnt, "usr/local/bin/pipegen"), "init", "--repo", repo, "--signing", "key")
	cmd.Env = append(os.Environ(), "CI_SERVER_URL=", "CI_REGISTRY_IMAGE=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pipegen init from the image: %v\n%s", err, out)
	}
	for _, f := range []string{".gitlab-ci.yml", "pipegen.yaml"} {
		b, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil {
			t.Fatal(err)
		}
		if want := "image: " + ToolImageRepository + ":" + commit; !bytes.Contains(b, []byte(want)) {
			t.Fatalf("%s written by the image's pipegen does not say %q:\n%s", f, want, b)
		}
	}
	if out, err := exec.Command(filepath.Join(mnt, "usr/local/bin/agent"), "version").CombinedOutput(); err != nil {
		t.Fatalf("agent version from the image: %v\n%s", err, out)
	}

	// This repository's own pipeline: the tools image is built, scanned, tested and signed, and released.
	first, err := exec.Command("git", "-C", root, "rev-list", "--max-parents=0", "HEAD").Output()
	if err != nil {
		t.Skipf("no history to diff against: %v", err)
	}
	base := strings.Fields(string(first))[0]
	res := pipegen(t, nil, "generate", "--repo", root, "--base", base)
	if res.code != 0 {
		t.Fatalf("generate: exit %d\n%s", res.code, res.stderr)
	}
	js := jobs(t, []byte(res.stdout))
	for _, j := range []string{"build:sawmill-tools", "scan:sawmill-tools", "test:sawmill-tools", "sign:sawmill-tools"} {
		if _, ok := js[j]; !ok {
			t.Errorf("this repository's pipeline has no %s job", j)
		}
	}
	rel, _ := js["release"].(map[string]any)
	vars, _ := rel["variables"].(map[string]any)
	if rebuilt, _ := vars["SAWMILL_REBUILT"].(string); !strings.Contains(" "+rebuilt+" ", " sawmill-tools ") {
		t.Errorf("the release does not carry the tools image: SAWMILL_REBUILT %q", rebuilt)
	}
}
