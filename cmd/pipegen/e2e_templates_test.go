package main

import (
	"context"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/release"
)

// TestEndToEndDefaultTemplates runs the default job templates (pipelines/*.yml as pipegen
// init writes them, unchanged) under gitlab-ci-local with stand-ins for the tools that cannot
// run here: buildah (pushes a random image to an in-process registry and writes the digest
// file), trivy, cosign and the agent (record their arguments). It checks the commands the
// templates run — build arguments, digests, the pinned signing format — and that the real
// `pipegen release` resolves, writes and publishes the release tags in that registry.
func TestEndToEndDefaultTemplates(t *testing.T) {
	gcl := gitlabCILocal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	bin := buildTools(ctx, t)
	work := t.TempDir()
	calls := filepath.Join(work, "calls.log")
	shims := map[string]string{
		// buildah: log; "push --digestfile F REF" pushes a random image to REF.
		"buildah": `#!/bin/sh
echo "buildah $*" >> ` + calls + `
case "$1 $2" in push*|"manifest push")
  file=
  for a in "$@"; do [ "$prev" = --digestfile ] && file=$a; prev=$a; ref=$a; done
  ` + filepath.Join(bin, "pushrandom") + ` "${ref#docker://}" > "$file" || exit 1
esac
`,
		"trivy": `#!/bin/sh
echo "trivy $*" >> ` + calls + `
while [ $# -gt 0 ]; do [ "$1" = --output ] && echo '{}' > "$2"; shift; done
`,
		"cosign": `#!/bin/sh
echo "cosign $*" >> ` + calls + `
`,
		"fake-agent": `#!/bin/sh
echo "agent $*" >> ` + calls + `
echo '<testsuites/>'
`,
	}
	for name, body := range shims {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	reg := testenv.Registry(t) + "/sawmill/platform"

	r := &gitRepo{T: t, Dir: filepath.Join(work, "repo")}
	os.MkdirAll(r.Dir, 0o755)
	r.Git("init", "-q", "-b", "main")
	r.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	if res := pipegen(t, nil, "init", "--repo", r.Dir, "--registry", reg, "--agent", "fake-agent", "--security-templates=false"); res.code != 0 {
		t.Fatal(res.stderr)
	}
	cfg, _ := os.ReadFile(filepath.Join(r.Dir, "pipegen.yaml"))
	cfgText := strings.Replace(string(cfg), "  mode: keyless", "  mode: key", 1)
	cfgText = strings.Replace(cfgText, "  format: bundle", "  format: legacy", 1)
	r.Write(map[string]string{
		"pipegen.yaml":                            cfgText,
		"images/base/Dockerfile":                  "FROM alpine:3.22\n",
		"images/app/Dockerfile":                   "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n",
		"images/app/image.yaml":                   "build_args: {VERSION: \"v-$CI_COMMIT_SHORT_SHA\"}\ntarget: runtime\ntest: ['echo \"image test $SAWMILL_IMAGE\" >> " + calls + "']\n",
		"images/multi/Dockerfile":                 "FROM scratch\n",
		"images/multi/image.yaml":                 "platforms: [linux/arm64, linux/amd64]\n",
		"stacks/platform/compose.yaml":            "services:\n  app:\n    image: ${REGISTRY}/app:latest\n",
		"stacks/platform/compose.production.yaml": "services:\n  app:\n    deploy: {replicas: 2}\n",
		".gitignore":                              ".gitlab-ci-local/\n.gitlab-ci-local-variables.yml\n",
	})
	sha := r.Commit("initial")

	// The signing key arrives as a file-type variable (gitlab-ci-local's project variables
	// file; its value in the job is a file's path), on a protected ref (only those are signed).
	projectVars := func(protected string) {
		os.WriteFile(filepath.Join(r.Dir, ".gitlab-ci-local-variables.yml"), []byte("CI_COMMIT_REF_PROTECTED: \""+protected+"\"\n"+
			"COSIGN_PRIVATE_KEY:\n  type: file\n  values:\n    \"*\": \"not a real key: the cosign stand-in records its arguments\"\n"), 0o600)
	}
	projectVars("true")
	cmd := exec.CommandContext(ctx, gcl, "--force-shell-executor", "--no-color")
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("gitlab-ci-local: %v\n%s", err, output)
	}
	// gitlab-ci-local 4.62.0 reports a trigger job with strategy: depend as passed even when its
	// child pipeline failed, so look for failed jobs in its output.
	if strings.Contains(string(output), " FAIL ") {
		t.Fatalf("a job failed:\n%s", output)
	}
	raw, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	log := string(raw)
	keyFile := ""
	if _, rest, ok := strings.Cut(log, "--use-signing-config=false --key "); ok {
		keyFile, _, _ = strings.Cut(rest, " ")
	}
	if !strings.HasPrefix(keyFile, "/") {
		t.Errorf("cosign did not get the file-type variable's path as its key: %q", keyFile)
	}
	// Each job has its own copy of the file: compare the commands with the path replaced.
	log = regexp.MustCompile(`--key /\S+`).ReplaceAllString(log, "--key KEYFILE")
	keyFile = "KEYFILE"

	// The release the real pipegen wrote, taken from the release job's artifacts.
	rel := readRelease(t, findArtifact(t, r.Dir, "release"))
	base, app := rel.Images["base"], rel.Images["app"]
	for _, want := range []string{
		"buildah build -f images/base/Dockerfile -t " + reg + "/base:" + sha + " --build-arg REGISTRY=" + reg + " images/base",
		"buildah push --digestfile BASE_DIGEST.txt " + reg + "/base:" + sha,
		"buildah build -f images/app/Dockerfile -t " + reg + "/app:" + sha + " --build-arg REGISTRY=" + reg +
			" --build-arg VERSION=v-" + sha[:8] + " --build-arg BASE_IMAGE=" + reg + "/base@" + base.Digest + " --target runtime images/app",
		"buildah build -f images/multi/Dockerfile --manifest " + reg + "/multi:" + sha + " --build-arg REGISTRY=" + reg + " --platform linux/amd64,linux/arm64 images/multi",
		"buildah manifest push --all --digestfile MULTI_DIGEST.txt " + reg + "/multi:" + sha + " docker://" + reg + "/multi:" + sha,
		"cosign sign --yes --recursive --new-bundle-format=false --use-signing-config=false --key " + keyFile + " " + reg + "/multi@" + rel.Images["multi"].Digest,
		"trivy image --format template --template @/contrib/gitlab.tpl --output gl-container-scanning-report.json " + reg + "/app@" + app.Digest,
		"trivy image --skip-db-update --exit-code 1 --severity HIGH,CRITICAL " + reg + "/app@" + app.Digest,
		"cosign attest --yes --recursive --new-bundle-format=false --use-signing-config=false --key " + keyFile + " --type cyclonedx --predicate gl-sbom.cdx.json " + reg + "/app@" + app.Digest,
		"image test app",
		"trivy image --format cyclonedx --output gl-sbom.cdx.json " + reg + "/base@" + base.Digest,
		"cosign sign --yes --recursive --new-bundle-format=false --use-signing-config=false --key " + keyFile + " " + reg + "/app@" + app.Digest,
		"cosign sign --yes --recursive --new-bundle-format=false --use-signing-config=false --key " + keyFile + " " + reg + "/base@" + base.Digest,
		"agent check -c stacks/platform/compose.yaml --env staging --pre-release " + reg + " -o junit",
		"agent check -c stacks/platform/compose.yaml -c stacks/platform/compose.production.yaml --env production --pre-release " + reg + " -o junit",
	} {
		if !strings.Contains(log, want+"\n") {
			t.Errorf("no call %q in\n%s", want, log)
		}
	}
	// The image's tests ran before it was signed.
	if i, j := strings.Index(log, "image test app\n"), strings.Index(log, "cosign sign --yes --recursive --new-bundle-format=false --use-signing-config=false --key KEYFILE "+reg+"/app@"); i < 0 || j < i {
		t.Errorf("image test at %d, signing at %d:\n%s", i, j, log)
	}
	if !strings.HasPrefix(base.Digest, "sha256:") || !base.Rebuilt || !app.Rebuilt {
		t.Errorf("release: %+v", rel)
	}
	// The release job published the channel tags: they name the signed digests.
	for name, img := range rel.Images {
		got, err := (release.OCI{}).Digest(ctx, reg+"/"+name+":release-main")
		if err != nil || got != img.Digest {
			t.Errorf("%s:release-main = %s, %v; want %s", name, got, err, img.Digest)
		}
	}
	if !strings.Contains(string(output), "deploy:staging") {
		t.Errorf("deploy:staging did not run:\n%s", output)
	}

	// An unprotected ref (a feature branch: the protected key variable is empty there) is not
	// signed, and its pipeline still passes: the digests go on to the release.
	r.Git("checkout", "-q", "-b", "feature")
	r.Write(map[string]string{"images/base/v": "2"})
	r.Commit("feature")
	os.Remove(calls)
	projectVars("false")
	cmd = exec.CommandContext(ctx, gcl, "--force-shell-executor", "--no-color")
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	output, err = cmd.CombinedOutput()
	if err != nil || strings.Contains(string(output), " FAIL ") {
		t.Fatalf("feature branch pipeline: %v\n%s", err, output)
	}
	raw, _ = os.ReadFile(calls)
	if strings.Contains(string(raw), "cosign sign") || !strings.Contains(string(output), "is not protected") {
		t.Errorf("an unprotected ref was signed:\n%s\n%s", raw, output)
	}
}

// findArtifact returns the directory gitlab-ci-local exported a job's artifact path to.
func findArtifact(t *testing.T, repo, path string) string {
	t.Helper()
	var found string
	filepath.WalkDir(filepath.Join(repo, ".gitlab-ci-local"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == path && strings.Contains(p, "artifacts") {
			if _, err := os.Stat(filepath.Join(p, "release.json")); err == nil && found == "" {
				found = p
			}
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no %s/ artifact under %s/.gitlab-ci-local", path, repo)
	}
	return found
}
