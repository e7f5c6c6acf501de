package main

import (
	"context"
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
// writes it. Under gitlab-ci-local (stand-ins for buildah and cosign, as in
// TestEndToEndDefaultTemplates) the parent runs generate, the build pipeline (which pushes every
// image as <commit>-p<parent pipeline>), then its own sign job, which resolves those tags and
// signs the digests in the parent pipeline, and exports them. gitlab-ci-local ignores
// `needs:pipeline:job` ("pipeline key not supported"), so the release pipeline's link to the sign
// job is checked in the generated YAML instead: its release job needs the parent's sign job by
// $SAWMILL_PARENT_PIPELINE_ID, and no sign job is left in any child pipeline.
func TestEndToEndParentSigning(t *testing.T) {
	gcl := gitlabCILocal(t)
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
		"trivy": `#!/bin/sh
while [ $# -gt 0 ]; do [ "$1" = --output ] && echo '{}' > "$2"; shift; done
`,
		// cosign: "triangulate --type digest REF" answers REPO@DIGEST for what buildah pushed.
		"cosign": `#!/bin/sh
echo "cosign $*" >> ` + calls + `
if [ "$1" = triangulate ]; then
  for a in "$@"; do ref=$a; done
  d=$(awk -v r="$ref" '$1 == r {print $2}' ` + pushed + `)
  [ -n "$d" ] || { echo "no such tag $ref" >&2; exit 1; }
  echo "${ref%:*}@$d"
fi
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
	reg := testenv.Registry(t) + "/sawmill/platform"
	r := &gitRepo{T: t, Dir: filepath.Join(work, "repo")}
	os.MkdirAll(r.Dir, 0o755)
	r.Git("init", "-q", "-b", "main")
	r.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	if res := pipegen(t, nil, "init", "--repo", r.Dir, "--registry", reg, "--agent", "fake-agent", "--security-templates=false", "--signing", "key", "--signing-pipeline", "parent"); res.code != 0 {
		t.Fatal(res.stderr)
	}
	cfg, _ := os.ReadFile(filepath.Join(r.Dir, "pipegen.yaml"))
	r.Write(map[string]string{
		"pipegen.yaml":                 strings.Replace(string(cfg), "  format: bundle", "  format: legacy", 1),
		"images/app/Dockerfile":        "FROM scratch\n",
		"images/web/Dockerfile":        "FROM scratch\n",
		"stacks/platform/compose.yaml": "services:\n  app:\n    image: ${REGISTRY}/app:latest\n",
		".gitignore":                   ".gitlab-ci-local/\n.gitlab-ci-local-variables.yml\n",
		".gitlab-ci-local-variables.yml": "CI_COMMIT_REF_PROTECTED: \"true\"\n" +
			"COSIGN_PRIVATE_KEY:\n  type: file\n  values:\n    \"*\": \"not a real key: the cosign stand-in records its arguments\"\n",
	})
	sha := r.Commit("initial")

	// The whole parent runs. gitlab-ci-local does not implement needs:pipeline:job: it says so
	// and runs the release pipeline's release job without the sign job's digests, which then
	// fails for that reason alone; every other job must pass.
	cmd := exec.CommandContext(ctx, gcl, "--force-shell-executor", "--no-color")
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	output, _ := cmd.CombinedOutput()
	unsupported := strings.Contains(string(output), "release.needs[0].job:sign ignored, pipeline key not supported")
	for _, line := range strings.Split(string(output), "\n") {
		if strings.Contains(line, " FAIL ") && !(unsupported && strings.Contains(line, "release")) {
			t.Fatalf("a job failed: %q\n%s", line, output)
		}
	}
	for _, job := range []string{"PASS  generate", "PASS  pipeline", "PASS  sign"} {
		if !strings.Contains(string(output), job) {
			t.Fatalf("no %q in\n%s", job, output)
		}
	}
	raw, _ := os.ReadFile(calls)
	log := string(raw)
	pushes, _ := os.ReadFile(pushed)
	digests := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(pushes)), "\n") {
		ref, d, _ := strings.Cut(line, " ")
		digests[ref] = d
	}
	if len(digests) != 2 {
		t.Fatalf("pushed %v, want app and web", digests)
	}
	for ref, d := range digests {
		repo, tag, _ := strings.Cut(strings.TrimPrefix(ref, reg+"/"), ":")
		if !strings.HasPrefix(tag, sha+"-p") {
			t.Errorf("the build pipeline pushed %s, want the tag %s-p<parent pipeline>", ref, sha)
		}
		sign := "cosign sign --yes --recursive --new-bundle-format=false --use-signing-config=false --key "
		i := strings.Index(log, sign)
		if i < 0 || !strings.Contains(log, reg+"/"+repo+"@"+d+"\n") {
			t.Errorf("the parent did not sign %s@%s:\n%s", repo, d, log)
		}
	}
	if !strings.Contains(string(output), "sign") || strings.Count(log, "cosign sign ") != 2 {
		t.Errorf("want two signatures, by the parent's sign job:\n%s\n%s", log, output)
	}
	// The sign job's dotenv report: the digests it signed, for the release pipeline.
	env := artifact(t, r.Dir, "sign.env")
	for ref, d := range digests {
		name := strings.ToUpper(strings.SplitN(strings.TrimPrefix(ref, reg+"/"), ":", 2)[0])
		if !strings.Contains(env, name+"_DIGEST="+d+"\n") {
			t.Errorf("sign.env lacks %s_DIGEST=%s:\n%s", name, d, env)
		}
	}

	// The generated pipelines: no sign job in the build pipeline; the release pipeline's release
	// job needs the parent's sign job.
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

// artifact returns the content of the first file called name that gitlab-ci-local kept of a job.
func artifact(t *testing.T, repo, name string) string {
	t.Helper()
	b, err := os.ReadFile(findFile(t, filepath.Join(repo, ".gitlab-ci-local"), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
