package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
	"go.yaml.in/yaml/v3"
)

// TestEndToEndParentSigning: signing.pipeline parent, as `pipegen init --signing-pipeline parent`
// writes it. Under gitlab-ci-local (stand-ins for buildah and trivy; the real cosign and ORAS
// CLIs, with a key the test generates, against the test registry) the parent runs generate, the
// build pipeline (which pushes every image as <commit>-p<parent pipeline> and, in sbom:<image>,
// its SBOM as the OCI artifact <repository>:sha256-<hex>.sbom), then its resolve job (the tag's
// digest and the SBOM, read back from the registry) and its sign job, which signs every digest
// and attests its SBOM in the parent pipeline. The test then verifies, with cosign and the public
// key, the signature and the CycloneDX attestation of each digest the build pipeline pushed, and
// that the attested SBOM is that image's. gitlab-ci-local ignores `needs:pipeline:job`
// ("pipeline key not supported"), so the release pipeline's link to the sign job is checked in
// the generated YAML instead: its release job needs the parent's sign job by
// $SAWMILL_PARENT_PIPELINE_ID, and no sign job is left in any child pipeline.
func TestEndToEndParentSigning(t *testing.T) {
	gcl := gitlabCILocal(t)
	cosign, oras := tool(t, "cosign"), tool(t, "oras")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	bin := buildTools(ctx, t)
	work := t.TempDir()
	calls, pushed := filepath.Join(work, "calls.log"), filepath.Join(work, "pushed")
	shims := map[string]string{
		// buildah: "push --digestfile F REF" pushes a random image to REF and remembers its digest.
		"buildah": `#!/bin/sh
echo "buildah $*" >> ` + calls + `
case "$1" in push)
  for a in "$@"; do [ "$prev" = --digestfile ] && file=$a; prev=$a; ref=$a; done
  ` + filepath.Join(bin, "pushrandom") + ` "$ref" > "$file" || exit 1
  echo "$ref $(cat "$file")" >> ` + pushed + `
esac
`,
		// trivy: every report it writes is a CycloneDX document naming the scanned reference.
		"trivy": `#!/bin/sh
for a in "$@"; do ref=$a; done
while [ $# -gt 0 ]; do
  [ "$1" = --output ] && printf '{"bomFormat":"CycloneDX","specVersion":"1.6","metadata":{"component":{"name":"%s"}}}' "$ref" > "$2"
  shift
done
`,
		"fake-agent": `#!/bin/sh
echo '<testsuites/>'
`,
	}
	for name, body := range shims {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, p := range map[string]string{"cosign": cosign, "oras": oras} {
		if err := os.Symlink(p, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	// A key pair of this test (cosign generate-key-pair; the password is random too).
	keys := t.TempDir()
	password := randomHex(t)
	gen := exec.CommandContext(ctx, cosign, "generate-key-pair")
	gen.Dir, gen.Env = keys, append(os.Environ(), "COSIGN_PASSWORD="+password)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
	}
	privateKey, err := os.ReadFile(filepath.Join(keys, "cosign.key"))
	if err != nil {
		t.Fatal(err)
	}
	// localhost: ORAS talks plain HTTP to localhost only (cosign to loopback addresses too).
	reg := strings.Replace(testenv.Registry(t), "127.0.0.1:", "localhost:", 1) + "/sawmill/platform"
	r := &gitRepo{T: t, Dir: filepath.Join(work, "repo")}
	os.MkdirAll(r.Dir, 0o755)
	r.Git("init", "-q", "-b", "main")
	r.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	if res := pipegen(t, nil, "init", "--repo", r.Dir, "--registry", reg, "--agent", "fake-agent", "--security-templates=false", "--signing", "key", "--signing-pipeline", "parent"); res.code != 0 {
		t.Fatal(res.stderr)
	}
	cfg, _ := os.ReadFile(filepath.Join(r.Dir, "pipegen.yaml"))
	if !strings.Contains(string(cfg), "sbom") {
		t.Fatalf("pipegen init's pipegen.yaml does not turn the sbom scanner on:\n%s", cfg)
	}
	keyYAML, _ := yaml.Marshal(map[string]any{"COSIGN_PRIVATE_KEY": map[string]any{"type": "file", "values": map[string]string{"*": string(privateKey)}}})
	r.Write(map[string]string{
		"pipegen.yaml":                 strings.Replace(string(cfg), "  format: bundle", "  format: legacy", 1),
		"images/app/Dockerfile":        "FROM scratch\n",
		"images/web/Dockerfile":        "FROM scratch\n",
		"stacks/platform/compose.yaml": "services:\n  app:\n    image: ${REGISTRY}/app:latest\n",
		".gitignore":                   ".gitlab-ci-local/\n.gitlab-ci-local-variables.yml\n",
		// No transparency log offline (SAWMILL_TLOG_UPLOAD=false).
		".gitlab-ci-local-variables.yml": "CI_COMMIT_REF_PROTECTED: \"true\"\nSAWMILL_TLOG_UPLOAD: \"false\"\nCOSIGN_PASSWORD: \"" + password + "\"\n" + string(keyYAML),
	})
	sha := r.Commit("initial")

	// The whole parent runs. gitlab-ci-local does not implement needs:pipeline:job: it says so
	// and runs the release pipeline's release job without the sign job's digests, which then
	// fails for that reason alone; every other job must pass. --shell-isolation: each job in a
	// directory of its own, with only the artifacts of the jobs it needs, as on GitLab (every
	// scan job writes gl-sbom.cdx.json).
	cmd := exec.CommandContext(ctx, gcl, "--force-shell-executor", "--shell-isolation", "--no-color")
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	output, _ := cmd.CombinedOutput()
	unsupported := strings.Contains(string(output), "release.needs[0].job:sign ignored, pipeline key not supported")
	for _, line := range strings.Split(string(output), "\n") {
		if strings.Contains(line, " FAIL ") && !(unsupported && strings.Contains(line, "release")) {
			t.Fatalf("a job failed: %q\n%s", line, output)
		}
	}
	for _, job := range []string{"PASS  generate", "PASS  pipeline", "PASS  resolve", "PASS  sign", "PASS  [pipeline] -> sbom:app", "PASS  [pipeline] -> sbom:web"} {
		if !strings.Contains(string(output), job) {
			t.Fatalf("no %q in\n%s", job, output)
		}
	}
	// cosign v3 warns of commands it removes in v4 ("Command ... is deprecated").
	if strings.Contains(string(output), "triangulate") || strings.Contains(string(output), "is deprecated") {
		t.Errorf("the jobs use a cosign command deprecated for removal:\n%s", output)
	}
	pushes, _ := os.ReadFile(pushed)
	digests := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(pushes)), "\n") {
		ref, d, _ := strings.Cut(line, " ")
		digests[ref] = d
	}
	if len(digests) != 2 {
		t.Fatalf("pushed %v, want app and web", digests)
	}
	// What a verifier sees in the registry: each digest signed with the test's key, and its SBOM
	// attested (CycloneDX), the SBOM of that very image.
	pub := filepath.Join(keys, "cosign.pub")
	for ref, d := range digests {
		repo, tag, _ := strings.Cut(ref, ":"+sha)
		if !strings.HasPrefix(tag, "-p") {
			t.Errorf("the build pipeline pushed %s, want the tag %s-p<parent pipeline>", ref, sha)
		}
		signed := repo + "@" + d
		if out, err := exec.CommandContext(ctx, cosign, "verify", "--key", pub, "--insecure-ignore-tlog=true", signed).CombinedOutput(); err != nil {
			t.Errorf("cosign verify %s: %v\n%s", signed, err, out)
		}
		out, err := exec.CommandContext(ctx, cosign, "verify-attestation", "--key", pub, "--insecure-ignore-tlog=true", "--type", "cyclonedx", signed).Output()
		if err != nil {
			t.Errorf("cosign verify-attestation %s: %v\n%s", signed, err, out)
			continue
		}
		if got := attestedComponent(t, out); got != signed {
			t.Errorf("the SBOM attested to %s is of %q", signed, got)
		}
	}
	// The sign job's dotenv report: the digests it signed, for the release pipeline.
	env := artifact(t, r.Dir, "sign.env")
	for ref, d := range digests {
		name := strings.ToUpper(strings.SplitN(strings.TrimPrefix(ref, reg+"/"), ":", 2)[0])
		if !strings.Contains(env, name+"_DIGEST="+d+"\n") {
			t.Errorf("sign.env lacks %s_DIGEST=%s:\n%s", name, d, env)
		}
	}

	// The generated pipelines: no sign job in the build pipeline, an sbom job per image; the
	// release pipeline's release job needs the parent's sign job.
	var child, rel map[string]any
	if err := yaml.Unmarshal([]byte(artifact(t, r.Dir, "child.yml")), &child); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(artifact(t, r.Dir, "release.yml")), &rel); err != nil {
		t.Fatal(err)
	}
	for name := range child {
		if strings.HasPrefix(name, "sign:") || name == "release" || strings.HasPrefix(name, "deploy:") {
			t.Errorf("the build pipeline has %s", name)
		}
	}
	for _, name := range []string{"sbom:app", "sbom:web"} {
		if _, ok := child[name]; !ok {
			t.Errorf("the build pipeline has no %s", name)
		}
	}
	release, _ := rel["release"].(map[string]any)
	needs, _ := release["needs"].([]any)
	if len(needs) != 1 {
		t.Fatalf("release needs %v", release["needs"])
	}
	n, _ := needs[0].(map[string]any)
	if n["pipeline"] != "$SAWMILL_PARENT_PIPELINE_ID" || n["job"] != "sign" || n["artifacts"] != true {
		t.Errorf("release needs %v, want the parent's sign job by $SAWMILL_PARENT_PIPELINE_ID", n)
	}
	if _, ok := rel["deploy:staging"]; !ok {
		t.Errorf("the release pipeline has no deploy:staging: %v", rel)
	}
}

// tool finds a CLI the test runs (make tools installs them); missing, the test fails under
// CI=true and is skipped otherwise.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found in PATH (run make tools)", name)
	}
	t.Skipf("%s not found in PATH (run make tools)", name)
	return ""
}

// randomHex is 16 random bytes, hex-encoded.
func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// attestedComponent reads the output of cosign verify-attestation (one DSSE envelope per line)
// and returns the metadata.component.name of the CycloneDX predicate of the first one.
func attestedComponent(t *testing.T, out []byte) string {
	t.Helper()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	var env struct{ Payload string }
	if err := json.Unmarshal([]byte(line), &env); err != nil {
		t.Fatalf("cosign verify-attestation printed %q: %v", out, err)
	}
	raw, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var statement struct {
		PredicateType string `json:"predicateType"`
		Predicate     struct {
			Metadata struct {
				Component struct{ Name string }
			}
		}
	}
	if err := json.Unmarshal(raw, &statement); err != nil {
		t.Fatal(err)
	}
	if statement.PredicateType != "https://cyclonedx.org/bom" {
		t.Errorf("attested predicate type %q, want https://cyclonedx.org/bom", statement.PredicateType)
	}
	return statement.Predicate.Metadata.Component.Name
}

// artifact returns the content of the first file called name that gitlab-ci-local kept of a job.
func artifact(t *testing.T, repo, name string) string {
	t.Helper()
	b, err := os.ReadFile(findFile(t, filepath.Join(repo, ".gitlab-ci-local"), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
