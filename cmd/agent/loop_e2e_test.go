package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// e2eTool finds a program the whole-loop test runs for real: on PATH, else in dirs. Missing, the test is
// skipped, or fails under CI=true.
func e2eTool(t *testing.T, name, hint string, dirs ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found: %s", name, hint)
	}
	t.Skipf("%s not found: %s", name, hint)
	return ""
}

// goBuildStatic builds pkg (a path relative to cmd/agent) as a static binary at out.
func goBuildStatic(t *testing.T, pkg, out string, ldflags string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w "+ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// copyRepoFiles copies the repository's files under paths (tracked, or new and not ignored) into dst: the
// agent image's build context as a checkout of this commit would have it.
func copyRepoFiles(t *testing.T, root, dst string, paths ...string) {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--"}, paths...)...).Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, p := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, p)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the work tree, or not a file
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		to := filepath.Join(dst, p)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// The scanner stand-in: no scanner is packaged for this machine, so `trivy` writes valid empty reports (a
// CycloneDX SBOM without components, a GitLab container-scanning report without findings) and finds nothing.
const trivyStandIn = `#!/bin/sh
# trivy stand-in of the whole-loop test: valid, empty reports.
out= fmt=
while [ $# -gt 0 ]; do
  case "$1" in --output) out=$2; shift ;; --format) fmt=$2; shift ;; esac
  shift
done
[ -n "$out" ] || exit 0
case "$fmt" in
cyclonedx) printf '{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,"metadata":{"tools":[{"name":"trivy stand-in"}]},"components":[]}\n' > "$out" ;;
*) printf '{"version":"15.0.7","vulnerabilities":[],"scan":{"type":"container_scanning","status":"success","start_time":"2026-01-01T00:00:00","end_time":"2026-01-01T00:00:00","analyzer":{"id":"trivy","name":"trivy stand-in","version":"0","vendor":{"name":"sawmill"}},"scanner":{"id":"trivy","name":"trivy stand-in","version":"0","vendor":{"name":"sawmill"}}}}\n' > "$out" ;;
esac
`

// TestWholeLoop is `make e2e`: the delivery loop on one machine, every part real but the scanners.
// gitlab-ci-local runs a monorepo's parent pipeline (pipegen init's) and the child pipeline pipegen generates,
// with this repository's job templates (pipelines/) and real tools: Debian's buildah builds images/agent's
// Dockerfile (FROM a Go toolchain image assembled from this machine, in the local registry) and a FROM scratch
// web image and pushes them to an in-process registry; the policy jobs run `agent check`; the cosign CLI signs
// them with a key generated for the run (a file-type variable); `pipegen release` writes the release; the
// deploy job carries it. The deploy job's deployment and artifact go to the GitLab API stand-in, then
// `agent install --config agent.yaml --token-file gitlab-token` (the README's command) installs the agent the
// pipeline built as a Swarm service on the test swarm; that service verifies, checks and deploys the web
// stack and reports to GitLab. The test asserts that both services run the digests the pipeline signed, and
// the commit status GitLab was told.
func TestWholeLoop(t *testing.T) {
	started := time.Now()
	dc := testenv.Docker(t)
	host := os.Getenv(testenv.DockerHostEnv)
	sock, gid := engineSocket(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	home, _ := os.UserHomeDir()
	gcl := e2eTool(t, "gitlab-ci-local", "make tools", filepath.Join(root, ".tools", "node_modules", ".bin"))
	e2eTool(t, "cosign", "make tools", filepath.Join(home, "go", "bin"))
	e2eTool(t, "buildah", "apt-get install buildah")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("buildah builds as root here (storage driver vfs): run the test as root")
		}
		t.Skip("buildah builds as root here (storage driver vfs): run the test as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	// The tools the jobs find on PATH: pipegen and the agent built from this tree, the scanner stand-in;
	// cosign and buildah are the machine's.
	bin := t.TempDir()
	goBuildStatic(t, "../pipegen", filepath.Join(bin, "pipegen"), "")
	goBuildStatic(t, ".", filepath.Join(bin, "agent"), "-X main.version=e2e")
	if err := os.WriteFile(filepath.Join(bin, "trivy"), []byte(trivyStandIn), 0o755); err != nil {
		t.Fatal(err)
	}
	path := bin + string(os.PathListSeparator) + filepath.Join(home, "go", "bin") + string(os.PathListSeparator) + os.Getenv("PATH")

	// The registry: in-process on 127.0.0.1, reached by the jobs (buildah, cosign, pipegen) and the engine.
	reg := testenv.Registry(t)
	goImg, err := imagebuild.GoDebian()
	if err != nil {
		t.Fatal(err)
	}
	goDigest, err := imagebuild.Push(goImg, reg+"/toolchain/golang:local")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: the Go toolchain image %s/toolchain/golang@%s", time.Since(started).Round(time.Second), reg, goDigest)

	// buildah's configuration for the jobs: the registry over plain HTTP, the run's own storage.
	work := t.TempDir()
	write := func(p, content string, mode os.FileMode) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	registriesConf := write(filepath.Join(work, "containers", "registries.conf"), fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg), 0o644)
	storageConf := write(filepath.Join(work, "containers", "storage.conf"), fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
		filepath.Join(work, "storage", "graph"), filepath.Join(work, "storage", "run")), 0o644)

	// The signing key, generated with the cosign CLI.
	keys := filepath.Join(work, "keys")
	os.MkdirAll(keys, 0o700)
	password := randomName("pw")
	keygen := exec.CommandContext(ctx, "cosign", "generate-key-pair")
	keygen.Dir = keys
	keygen.Env = append(os.Environ(), "PATH="+path, "COSIGN_PASSWORD="+password)
	if out, err := keygen.CombinedOutput(); err != nil {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
	}
	privateKey, err := os.ReadFile(filepath.Join(keys, "cosign.key"))
	if err != nil {
		t.Fatal(err)
	}

	// The monorepo: the agent's image and build context (this repository's Dockerfile, cmd/, internal/,
	// policies/), a FROM scratch web image, the agent's stack and a web stack, this repository's job templates.
	agentStack, webStack, leaseName := randomName("agent"), randomName("web"), randomName("lease")
	repo := &testenv.GitRepo{T: t, Dir: filepath.Join(work, "repo")}
	os.MkdirAll(repo.Dir, 0o755)
	repo.Git("init", "-q", "-b", "main")
	repo.Git("remote", "add", "origin", "https://gitlab.example.com/sawmill/platform.git")
	pipegenInit := exec.CommandContext(ctx, filepath.Join(bin, "pipegen"), "init", "--repo", repo.Dir, "--registry", reg+"/sawmill", "--security-templates=false")
	if out, err := pipegenInit.CombinedOutput(); err != nil {
		t.Fatalf("pipegen init: %v\n%s", err, out)
	}
	copyRepoFiles(t, root, repo.Dir, "go.mod", "go.sum", "cmd", "internal", "policies", "images/agent/Dockerfile",
		"pipelines/build.yml", "pipelines/scan.yml", "pipelines/sign.yml", "pipelines/test.yml", "pipelines/release.yml", "pipelines/deploy.yml")
	agentCompose, err := os.ReadFile(filepath.Join(root, "stacks", "agent", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	goStatic := filepath.Join(repo.Dir, "images", "web", "testsvc")
	goBuildStatic(t, "../../internal/testing/testenv/testsvc", goStatic, "")
	repo.Write(map[string]string{
		"pipegen.yaml": fmt.Sprintf(`registry: %s/sawmill
default_branch: main
environments:
  - {name: e2e, tier: staging, when: automatic, branch: main}
signing: {mode: key, format: bundle, key_variable: COSIGN_PRIVATE_KEY}
builder: buildah
scanners: [container_scanning, sbom]
severity_threshold: high
templates: pipelines
tool: {image: none, command: pipegen, agent: agent}
`, reg),
		// One platform (the test swarm's) instead of images/agent's two: the build stage would compile twice.
		"images/agent/image.yaml": fmt.Sprintf("context: .\nwatch: [go.mod, go.sum, cmd/agent, internal, policies]\nbuild_args: {GO_IMAGE: %q, VERSION: \"$CI_COMMIT_SHORT_SHA\"}\n",
			reg+"/toolchain/golang@"+goDigest),
		"images/web/Dockerfile":                      "FROM scratch\nCOPY testsvc /testsvc\nUSER 65534:65534\nENTRYPOINT [\"/testsvc\"]\n",
		"stacks/" + agentStack + "/compose.yaml":     string(agentCompose),
		"stacks/" + agentStack + "/compose.e2e.yaml": agentE2EOverride,
		"stacks/" + webStack + "/compose.yaml":       fmt.Sprintf(demoCompose, "${REGISTRY}/web:${TAG:-latest}"),
		".gitignore":                                 ".gitlab-ci-local/\n.gitlab-ci-local-variables.yml\n",
		".gitlab-ci-local-variables.yml":             "",
	})
	sha := repo.Commit("the platform")
	// The project's CI/CD variables: a protected ref, the key as a file-type variable, its password, and
	// signatures without a transparency log (there is no Rekor here).
	var vars strings.Builder
	fmt.Fprintf(&vars, "CI_COMMIT_REF_PROTECTED: \"true\"\nSAWMILL_TLOG_UPLOAD: \"false\"\nCOSIGN_PASSWORD: %q\nCOSIGN_PRIVATE_KEY:\n  type: file\n  values:\n    \"*\": |\n", password)
	for _, l := range strings.Split(strings.TrimSpace(string(privateKey)), "\n") {
		vars.WriteString("      " + l + "\n")
	}
	write(filepath.Join(repo.Dir, ".gitlab-ci-local-variables.yml"), vars.String(), 0o600)

	// The pipeline.
	t.Logf("%s: gitlab-ci-local runs the pipeline of %s", time.Since(started).Round(time.Second), sha[:8])
	cmd := exec.CommandContext(ctx, gcl, "--force-shell-executor", "--no-color")
	cmd.Dir = repo.Dir
	cmd.Env = append(os.Environ(), "PATH="+path, "CONTAINERS_REGISTRIES_CONF="+registriesConf, "CONTAINERS_STORAGE_CONF="+storageConf,
		"TUF_ROOT="+filepath.Join(work, "tuf"))
	output, err := cmd.CombinedOutput()
	// gitlab-ci-local reports a trigger job with strategy: depend as passed even when its child pipeline
	// failed: look for failed jobs in its output too.
	if err != nil || strings.Contains(string(output), " FAIL ") {
		t.Fatalf("gitlab-ci-local: %v\n%s", err, output)
	}
	// gitlab-ci-local's summary lines: the jobs of both pipelines, all passed. E2E_DEBUG=1 logs every line.
	var summary string
	for _, l := range strings.Split(string(output), "\n") {
		if strings.Contains(l, " PASS ") {
			summary += "\n" + l
		}
	}
	t.Logf("%s: the pipeline passed%s", time.Since(started).Round(time.Second), summary)
	if os.Getenv("E2E_DEBUG") != "" {
		t.Log(string(output))
	}
	signed := map[string]string{} // image -> digest the sign job signed
	for _, m := range regexp.MustCompile(`signed `+regexp.QuoteMeta(reg)+`/sawmill/([a-z_]+)@(sha256:[0-9a-f]{64})`).FindAllStringSubmatch(string(output), -1) {
		signed[m[1]] = m[2]
	}
	if signed["agent"] == "" || signed["web"] == "" {
		t.Fatalf("the sign jobs signed %v, want agent and web:\n%s", signed, output)
	}
	for _, want := range []string{"built " + reg + "/sawmill/agent:" + sha + "@" + signed["agent"], "attested the SBOM of " + reg + "/sawmill/agent@" + signed["agent"]} {
		if !strings.Contains(string(output), want) {
			t.Errorf("no %q in the pipeline's output", want)
		}
	}

	// The agent's image as images/agent/Dockerfile describes it: nobody, its own probe (kept in Docker's image
	// format; OCI's has no HEALTHCHECK).
	ref, err := name.ParseReference(reg+"/sawmill/agent@"+signed["agent"], name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if hc := cf.Config.Healthcheck; cf.Config.User != "65534:65534" || hc == nil || strings.Join(hc.Test, " ") != "CMD /agent healthcheck" {
		t.Errorf("the agent image built by the pipeline: user %q, healthcheck %+v", cf.Config.User, hc)
	}
	if files := imageFiles(t, img); !files["agent"] || !files["sawmill-sops"] {
		t.Errorf("the agent image built by the pipeline lacks /agent or its SOPS helper /sawmill-sops")
	}

	// The deploy job's artifact: the release the agent fetches.
	files := map[string]string{}
	relDir := deployArtifact(t, repo.Dir, "e2e")
	err = filepath.WalkDir(relDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(relDir, p)
		b, err := os.ReadFile(p)
		files["release/"+filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rel, err := manifest.Parse([]byte(files["release/release.json"]))
	if err != nil {
		t.Fatalf("the deploy job's release.json: %v", err)
	}
	for name, digest := range signed {
		if got := rel.Images[name].Digest; got != digest {
			t.Errorf("the release pins %s to %s, the pipeline signed %s", name, got, digest)
		}
	}

	// GitLab: the deploy job's deployment, its job's artifact.
	gl := testenv.NewGitLab("glpat-loop", "sawmill/platform")
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 42, Pipeline: 7, Environment: "e2e", Status: "success", SHA: sha, Ref: "main",
		Finished: time.Now().UTC()}, files)

	// The operator's files and the README's install command.
	t.Cleanup(func() { removeInstalled(dc, agentStack, leaseName, reg, webStack) })
	op := filepath.Join(work, "operator")
	pub, err := os.ReadFile(filepath.Join(keys, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(op, "cosign.pub"), string(pub), 0o644)
	write(filepath.Join(op, "gitlab-token"), "glpat-loop\n", 0o600)
	write(filepath.Join(op, "agent.yaml"), operatorConfig{gitlab: srv.URL, lease: leaseName, agentStack: agentStack, sock: sock, gid: gid, registry: reg}.String(), 0o600)
	install := exec.CommandContext(ctx, filepath.Join(bin, "agent"), "install", "--config", "agent.yaml", "--token-file", "gitlab-token", "--stack", agentStack)
	install.Dir = op
	install.Env = append(os.Environ(), "DOCKER_HOST="+host)
	var iout bytes.Buffer
	install.Stdout, install.Stderr = &iout, &iout
	err = install.Run()
	t.Logf("%s: agent install --config agent.yaml --token-file gitlab-token --stack %s: %v\n%s", time.Since(started).Round(time.Second), agentStack, err, iout.String())
	if err != nil || !strings.Contains(iout.String(), "installed") {
		t.Fatalf("agent install: %v", err)
	}

	// The agent service deploys the web stack from the same release and tells GitLab.
	status := func() (state, desc string) {
		for _, s := range gl.Statuses() {
			if s.SHA == sha && s.Name == "sawmill/e2e" {
				state, desc = s.State, s.Description
			}
		}
		return
	}
	waitUntil(t, "the agent service deploys the release and reports it", 3*time.Minute, func() (bool, string) {
		s, d := status()
		return s == "success", s + " " + d
	})
	t.Logf("%s: GitLab was told %v", time.Since(started).Round(time.Second), gl.Statuses())
	for _, s := range gl.Statuses() {
		if s.SHA != sha || (s.State != "success" && s.State != "running" && s.State != "pending") {
			t.Errorf("GitLab was told %s for %s (%s): %s", s.State, s.SHA, s.Name, s.Description)
		}
	}
	for svc, image := range map[string]string{agentStack + "_agent": "agent", webStack + "_web": "web"} {
		want := reg + "/sawmill/" + image + ":" + sha + "@" + signed[image]
		s, err := dc.ServiceInspect(ctx, svc, client.ServiceInspectOptions{})
		if err != nil {
			t.Fatalf("service %s: %v", svc, err)
		}
		if got := s.Service.Spec.TaskTemplate.ContainerSpec.Image; got != want {
			t.Errorf("%s runs %s, want %s (the digest the pipeline signed)", svc, got, want)
		}
		waitUntil(t, svc+" has a running task of the signed image", time.Minute, func() (bool, string) {
			l, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", s.Service.ID).Add("desired-state", "running")})
			if err != nil {
				return false, err.Error()
			}
			var states []string
			for _, tk := range l.Items {
				if tk.Status.State == "running" && tk.Spec.ContainerSpec.Image == want {
					return true, ""
				}
				states = append(states, string(tk.Status.State))
			}
			return false, strings.Join(states, ",")
		})
	}
	t.Logf("whole loop: %s", time.Since(started).Round(time.Second))
}

// deployArtifact returns the directory gitlab-ci-local exported deploy:<env>'s release/ artifact to.
func deployArtifact(t *testing.T, repo, env string) string {
	t.Helper()
	var found []string
	// gitlab-ci-local names a job's directory by its name, each run of other characters than [A-Za-z0-9_-]
	// base64url-encoded (":" is "Og").
	safeJob := "deploy" + base64.RawURLEncoding.EncodeToString([]byte(":")) + env
	filepath.WalkDir(filepath.Join(repo, ".gitlab-ci-local"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "release" && strings.Contains(p, "artifacts") && strings.Contains(p, safeJob) {
			if _, err := os.Stat(filepath.Join(p, "release.json")); err == nil {
				found = append(found, p)
			}
		}
		return nil
	})
	sort.Strings(found)
	if len(found) == 0 {
		t.Fatalf("no release/ artifact of deploy:%s under %s/.gitlab-ci-local", env, repo)
	}
	return found[0]
}

// removeStackVolumes removes the named volumes of stack name (the agent's state), once the containers that
// used them are gone.
func removeStackVolumes(dc *client.Client, name string) {
	ctx := context.Background()
	byLabel := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		vols, err := dc.VolumeList(ctx, client.VolumeListOptions{Filters: byLabel})
		if err != nil || len(vols.Items) == 0 {
			return
		}
		for _, v := range vols.Items {
			_, _ = dc.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{})
		}
	}
}

// removeRegistryImages removes the engine's images pulled from the test registry reg.
func removeRegistryImages(dc *client.Client, reg string) {
	ctx := context.Background()
	imgs, _ := dc.ImageList(ctx, client.ImageListOptions{All: true})
	for _, im := range imgs.Items {
		for _, r := range append(im.RepoDigests, im.RepoTags...) {
			if strings.HasPrefix(r, reg+"/") {
				_, _ = dc.ImageRemove(ctx, im.ID, client.ImageRemoveOptions{Force: true})
				break
			}
		}
	}
}

// imageFiles are the paths of an image's files (its layers flattened), without the leading "/".
func imageFiles(t *testing.T, img v1.Image) map[string]bool {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]bool{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/")] = true
	}
}
