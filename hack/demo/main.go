// Command demo runs the local demo (`make demo`): the whole delivery path of Sawmill on one machine.
//
// On the swarm named by DOCKER_HOST (`make demo` starts or reuses a private single-node one, hack/dockerd.sh)
// it:
//  1. runs pipegen on this repository: which images a pipeline would rebuild, and the child pipeline's jobs;
//  2. starts an in-process OCI registry on 127.0.0.1;
//  3. builds go_ingest (a static binary in a FROM scratch image, without a daemon), live_py (assembled from
//     Debian's python3 and python3-psycopg2, no pip needed) and, where Docker Hub cannot be reached, a
//     PostgreSQL image assembled from Debian's postgresql package (on a machine that reaches Docker Hub it
//     uses upstream's postgres image, pinned by digest);
//  4. signs the images it built with a cosign key generated for this run;
//  5. writes a release with `pipegen release`, as the pipeline's release job does: go_ingest and live_py
//     pinned to their digests in the demo stack (examples/demo/compose.yaml, placed at stacks/demo of a workspace);
//  6. runs the agent once (`agent run --once`, source dir) to deploy it: the agent prints the signatures it
//     verified, what the policies said and the plan it applied;
//  7. shows the services answering: go_ingest's /healthz, two records ingested into PostgreSQL, and the
//     activity event live_py streams about them.
//
// With -cleanup it removes the demo stack and the images the demo's rollouts pulled into the engine instead
// (`make demo-clean` then stops the private engine).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/cosignkey"
	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
)

// upstreamPostgres is the stack's default PostgreSQL image (examples/demo/compose.yaml, stacks/platform).
const upstreamPostgres = "postgres:16.4@sha256:e62fbf9d3e2b49816a32c400ed2dba83e3b361e6833e624024309c35d334b412"

// options are the demo's flags.
type options struct {
	Agent, Pipegen string
	Port, LivePort string
	// Images: auto (upstream where Docker Hub answers, else local), upstream or local.
	Images string
	// Repo is the repository root; Stack the demo compose file.
	Repo, Stack string
	// UpstreamPostgres is the upstream PostgreSQL image, pinned by digest.
	UpstreamPostgres string
}

func main() {
	var o options
	flag.StringVar(&o.Agent, "agent", "bin/agent", "the agent binary")
	flag.StringVar(&o.Pipegen, "pipegen", "bin/pipegen", "the pipegen binary")
	flag.StringVar(&o.Port, "port", "18080", "host port go_ingest publishes")
	flag.StringVar(&o.LivePort, "live-port", "18081", "host port live_py publishes")
	flag.StringVar(&o.Images, "images", "auto", "third-party images: upstream (Docker Hub), local (assembled from Debian's packages) or auto")
	flag.StringVar(&o.Repo, "repo", ".", "the repository root")
	flag.StringVar(&o.Stack, "stack", "examples/demo/compose.yaml", "the demo stack")
	flag.StringVar(&o.UpstreamPostgres, "upstream-postgres", upstreamPostgres, "the upstream PostgreSQL image, pinned by digest (-images auto or upstream)")
	cleanup := flag.Bool("cleanup", false, "remove the demo stack and exit")
	flag.Parse()
	ctx := context.Background()
	dc, err := client.New(client.FromEnv)
	if err == nil {
		defer dc.Close()
		if *cleanup {
			if err = remove(ctx, dc, "demo", os.Stdout); err == nil {
				err = removeImages(ctx, dc, os.Stdout)
			}
		} else {
			err = run(ctx, dc, o, os.Stdout)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dc *client.Client, o options, out io.Writer) error {
	info, err := dc.Info(ctx, client.InfoOptions{})
	if err != nil {
		return fmt.Errorf("docker engine (DOCKER_HOST): %w", err)
	}
	if info.Info.Swarm.LocalNodeState != "active" || !info.Info.Swarm.ControlAvailable {
		return errors.New("the engine is not a swarm manager: `make demo` starts one (hack/dockerd.sh)")
	}
	if err := portsFree(ctx, dc, o.Port, o.LivePort); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "sawmill-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// The pipeline tags the images it builds with the commit SHA.
	commit := revision(o.Repo)
	tag := commit

	// 1. pipegen on this repository. The demo has no earlier release (pipegen would read the
	// channel record from pipegen.yaml's registry, which the demo cannot reach): an all-zero
	// base rebuilds everything.
	const noBase = "0000000000000000000000000000000000000000"
	step(out, "pipegen plan --repo %s --base %s", o.Repo, noBase)
	if err := command(ctx, out, nil, o.Pipegen, "plan", "--repo", o.Repo, "--base", noBase); err != nil {
		return err
	}
	child := filepath.Join(work, "child-pipeline.yml")
	if err := command(ctx, io.Discard, nil, o.Pipegen, "generate", "--repo", o.Repo, "--base", noBase, "-o", child); err != nil {
		return err
	}
	jobs, err := pipelineJobs(child)
	if err != nil {
		return err
	}
	step(out, "pipegen generate: the child pipeline has %d jobs: %s", len(jobs), strings.Join(jobs, " "))

	// 2. The registry lives as long as this process; the engine pulls from it during the rollout.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	defer srv.Close()
	reg := l.Addr().String() + "/sawmill"
	step(out, "registry: in-process, %s", reg)

	// 3. Images.
	key, err := cosignkey.Generate()
	if err != nil {
		return err
	}
	bin, err := goBuild(ctx, o.Repo, "./images/go_ingest", work)
	if err != nil {
		return err
	}
	img, err := imagebuild.Image(imagebuild.Spec{
		Binary: bin, Name: "go_ingest", User: "65534:65534", ExposedPort: "8080",
		Env: []string{"INGEST_LISTEN=:8080", "INGEST_TOKEN_FILE=/run/secrets/ingest_token"},
	})
	if err != nil {
		return err
	}
	ingestRepo := reg + "/go_ingest"
	ingestDigest, err := imagebuild.Push(img, ingestRepo+":"+tag)
	if err != nil {
		return err
	}
	step(out, "built go_ingest: %s:%s@%s (static binary FROM scratch, no daemon, no base image)", ingestRepo, tag, ingestDigest)
	signed := []string{ingestRepo + "@" + ingestDigest}

	live, err := imagebuild.LivePyDebian(filepath.Join(o.Repo, "images", "live_py"))
	if err != nil {
		return err
	}
	liveRepo := reg + "/live_py"
	liveDigest, err := imagebuild.Push(live, liveRepo+":"+tag)
	if err != nil {
		return err
	}
	step(out, "built live_py: %s:%s@%s (%d MB compressed, Debian's python3 and python3-psycopg2, no pip)", liveRepo, tag, liveDigest, compressedMB(live))
	signed = append(signed, liveRepo+"@"+liveDigest)

	postgres, err := postgresImage(ctx, o.Images, o.UpstreamPostgres, reg, out)
	if err != nil {
		return err
	}
	if strings.HasPrefix(postgres, reg+"/") {
		signed = append(signed, postgres)
	}

	// 4. Sign what was built here; the agent verifies against the public half only.
	for _, ref := range signed {
		if err := key.Sign(ref); err != nil {
			return err
		}
		step(out, "signed %s with a key generated for this run", ref)
	}

	// 5. The release, as the pipeline's release job writes it.
	ws := filepath.Join(work, "repo")
	if err := workspace(o.Repo, o.Stack, ws, reg); err != nil {
		return err
	}
	rel := filepath.Join(work, "release")
	releaseEnv := append(os.Environ(), "GO_INGEST_DIGEST="+ingestDigest, "LIVE_PY_DIGEST="+liveDigest)
	step(out, "pipegen release: go_ingest and live_py pinned in stacks/demo (workspace: this repository's images/, the demo stack, the local registry)")
	if err := command(ctx, out, releaseEnv, o.Pipegen, "release", "--repo", ws, "--out", rel, "--rebuilt", "go_ingest,live_py",
		"--tag", tag, "--commit", commit, "--ref", "main", "--project", "sabeiro/sawmill"); err != nil {
		return err
	}
	pinned, err := os.ReadFile(filepath.Join(rel, "stacks", "demo", "compose.yaml"))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(pinned), "\n") {
		if strings.Contains(line, "image: ") {
			fmt.Fprintf(out, "   release: %s\n", strings.TrimSpace(line))
		}
	}

	// 6. The agent, once, from the release directory.
	cfg := filepath.Join(work, "agent.yaml")
	if err := os.WriteFile(cfg, agentConfig(rel, filepath.Join(work, "state"), reg, o.UpstreamPostgres, key.PublicPEM, postgres, o.Port, o.LivePort), 0o600); err != nil {
		return err
	}
	// The password and the token reach the services only as Docker secrets; they are never printed.
	token := randomHex()
	env := append(os.Environ(), "DEMO_DB_PASSWORD="+randomHex(), "DEMO_INGEST_TOKEN="+token)
	step(out, "agent run --once --config agent.yaml (environment demo, source dir, trust: the generated key for %s/**)", reg)
	if err := command(ctx, out, env, o.Agent, "run", "--once", "--config", cfg); err != nil {
		return err
	}
	step(out, "agent run --once again: the same release, nothing to change")
	if err := command(ctx, out, env, o.Agent, "run", "--once", "--config", cfg); err != nil {
		return err
	}

	// 7. The service answering.
	base := "http://127.0.0.1:" + o.Port
	body, err := waitHealthy(ctx, base+"/healthz", 90*time.Second)
	if err != nil {
		return err
	}
	step(out, "GET %s/healthz -> %s", base, body)
	liveBase := "http://127.0.0.1:" + o.LivePort
	if body, err = waitHealthy(ctx, liveBase+"/healthz", 90*time.Second); err != nil {
		return err
	}
	step(out, "GET %s/healthz -> %s", liveBase, body)
	// Follow live_py's event stream from before the records are sent.
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	events, err := openEvents(sctx, liveBase+"/events")
	if err != nil {
		return err
	}
	defer events.Close()
	records := `[{"source":"demo","payload":{"step":"ingest"}},{"source":"demo","payload":{"step":"query"}}]`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/ingest/events", strings.NewReader(records))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST /v1/ingest/events: %w", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	step(out, "POST %s/v1/ingest/events (2 records, bearer token) -> %d %s", base, resp.StatusCode, bytes.TrimSpace(b))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("go_ingest refused the records: %s", resp.Status)
	}
	activity, err := nextEvent(events, "activity")
	if err != nil {
		return fmt.Errorf("live_py's event stream %s/events: %w", liveBase, err)
	}
	step(out, "live_py streamed (GET %s/events): event: activity data: %s", liveBase, activity)
	step(out, "done; `make demo-clean` removes the demo stack")
	return nil
}

func step(out io.Writer, format string, args ...any) {
	fmt.Fprintf(out, "== "+format+"\n", args...)
}

// command runs a program with its output on out (stderr too: the agent's and pipegen's logs are part of
// the demo).
func command(ctx context.Context, out io.Writer, env []string, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(prog), args[0], err)
	}
	return nil
}

// revision is the repository's HEAD commit (forty zeros outside a git checkout).
func revision(repo string) string {
	b, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	commit := strings.TrimSpace(string(b))
	if err != nil || len(commit) != 40 {
		return strings.Repeat("0", 40)
	}
	return commit
}

// pipelineJobs lists the jobs of a generated pipeline in file order.
func pipelineJobs(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: not a YAML mapping: %v", path, err)
	}
	var jobs []string
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		switch k := m.Content[i].Value; k {
		case "include", "stages", "variables", "default", "workflow":
		default:
			jobs = append(jobs, k)
		}
	}
	return jobs, nil
}

func goBuild(ctx context.Context, repo, pkg, dir string) ([]byte, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w", pkg, err)
	}
	return os.ReadFile(out)
}

// postgresImage returns the PostgreSQL image the demo deploys, pinned by digest: upstream (Docker Hub's
// postgres) where its registry answers (mode upstream, or auto), else one assembled from Debian's postgresql
// package and pushed to reg (mode local, or auto without Docker Hub).
func postgresImage(ctx context.Context, mode, upstream, reg string, out io.Writer) (string, error) {
	switch mode {
	case "upstream", "local", "auto":
	default:
		return "", fmt.Errorf("-images %q: use auto, upstream or local", mode)
	}
	if mode != "local" {
		ref, err := name.ParseReference(upstream)
		if err != nil {
			return "", fmt.Errorf("-upstream-postgres: %w", err)
		}
		if _, pinned := ref.(name.Digest); !pinned {
			return "", fmt.Errorf("-upstream-postgres %s: not pinned by digest (repository:tag@sha256:...)", upstream)
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = remote.Head(ref, remote.WithContext(hctx))
		cancel()
		if err == nil {
			step(out, "postgres: upstream %s (its registry answers)", upstream)
			return upstream, nil
		}
		if mode == "upstream" {
			return "", fmt.Errorf("upstream image %s: %w", upstream, err)
		}
		step(out, "postgres: %s cannot be reached (%v); assembling an image from Debian's postgresql package", ref.Context().RegistryStr(), rootCause(err))
	}
	img, err := imagebuild.PostgresDebian()
	if err != nil {
		return "", err
	}
	repo := reg + "/postgres"
	digest, err := imagebuild.Push(img, repo+":debian")
	if err != nil {
		return "", err
	}
	step(out, "built postgres: %s:debian@%s (%d MB compressed, from this machine's Debian packages)", repo, digest, compressedMB(img))
	return repo + ":debian@" + digest, nil
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// workspace lays out what `pipegen release` reads, as a pipeline's checkout would have it: the repository's
// images/ and go.mod/go.sum (go_ingest's build context), the demo stack as stacks/demo, and a pipegen.yaml
// naming the local registry and the one environment, demo.
func workspace(repo, stackFile, ws, reg string) error {
	for _, f := range []string{"go.mod", "go.sum"} {
		if err := copyFile(filepath.Join(repo, f), filepath.Join(ws, f)); err != nil {
			return err
		}
	}
	src := filepath.Join(repo, "images")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(repo, p)
		if err != nil {
			return err
		}
		return copyFile(p, filepath.Join(ws, rel))
	})
	if err != nil {
		return err
	}
	if err := copyFile(stackFile, filepath.Join(ws, "stacks", "demo", "compose.yaml")); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`# Written by hack/demo: the local registry and the demo's one environment.
registry: %s
default_branch: main
environments:
  - name: demo
    tier: development
    when: automatic
    branch: main
`, reg)
	return os.WriteFile(filepath.Join(ws, "pipegen.yaml"), []byte(cfg), 0o644)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// agentConfig is the agent's configuration for the demo: the release directory as its source, the demo
// environment and stack, and a trust policy that requires the generated key's signature on every image of
// the local registry. The upstream PostgreSQL image carries no cosign signature: it is let through pinned
// (warn), and its registry is allowed.
func agentConfig(release, state, reg, upstream, publicPEM, postgres, port, livePort string) []byte {
	pem := strings.ReplaceAll(strings.TrimSpace(publicPEM), "\n", "\n            ")
	upstreamRepo, upstreamRegistry := "index.docker.io/library/postgres", "docker.io"
	if ref, err := name.ParseReference(upstream); err == nil {
		upstreamRepo = ref.Context().Name()
		if upstreamRegistry = ref.Context().RegistryStr(); upstreamRegistry == name.DefaultRegistry {
			upstreamRegistry = "docker.io" // as the policies name Docker Hub
		}
	}
	return []byte(fmt.Sprintf(`environment: demo
source: dir
dir: %s
stacks: [demo]
state_dir: %s
listen: ""
log_level: warn
timeout: 3m
# The demo's own lease (a test may run the demo beside other agents on the test swarm).
lease: {name: sawmill-demo-lease}
policy_mode: enforce
tier: development
allowed_registries: [%q, %q]
# What the release may read: these values, and two secrets from this process's environment (nothing else
# of it reaches the release).
variables:
  POSTGRES_IMAGE: %q
  DEMO_PORT: %q
  DEMO_LIVE_PORT: %q
pass_env: [DEMO_DB_PASSWORD, DEMO_INGEST_TOKEN]
# The demo publishes its services on loopback ports without the edge proxy: the platform grants that.
grants:
  - {rule: published_ports, stack: demo, service: go_ingest}
  - {rule: published_ports, stack: demo, service: live_py}
trust:
  rules:
    - pattern: %q
      mode: enforce
      authorities:
        - name: demo-key
          key: |
            %s
    - pattern: %q
      mode: warn
      authorities:
        - name: demo-key
          key: |
            %s
`, release, state, reg, upstreamRegistry, postgres, port, livePort, reg+"/**", pem, upstreamRepo, pem))
}

func randomHex() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func waitHealthy(ctx context.Context, url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
			if resp.StatusCode == http.StatusOK {
				return last, nil
			}
		} else {
			last = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	return "", fmt.Errorf("%s did not answer 200 within %s (last: %s)", url, timeout, last)
}

// remove deletes the objects of the stack the agent created, services first.
func remove(ctx context.Context, dc *client.Client, name string, out io.Writer) error {
	f := make(client.Filters).Add("label", stack.LabelNamespace+"="+name).Add("label", stack.LabelOwner+"="+stack.OwnerValue)
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		if _, err := dc.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil {
			return err
		}
	}
	for i := 0; i < 60; i++ {
		left := 0
		secrets, _ := dc.SecretList(ctx, client.SecretListOptions{Filters: f})
		for _, s := range secrets.Items {
			if _, err := dc.SecretRemove(ctx, s.ID, client.SecretRemoveOptions{}); err != nil {
				left++
			}
		}
		configs, _ := dc.ConfigList(ctx, client.ConfigListOptions{Filters: f})
		for _, c := range configs.Items {
			if _, err := dc.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
				left++
			}
		}
		nets, _ := dc.NetworkList(ctx, client.NetworkListOptions{Filters: f})
		for _, n := range nets.Items {
			if _, err := dc.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
				left++
			}
		}
		if left == 0 {
			fmt.Fprintf(out, "stack %s removed\n", name)
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("stack %s: objects still in use after 30s", name)
}

// demoImage matches the images the demo pushes to its in-process registry, as the engine recorded them.
var demoImage = regexp.MustCompile(`^127\.0\.0\.1:\d+/sawmill/(go_ingest|live_py|postgres)[:@]`)

// removeImages deletes the demo's images from the engine once no container uses them any more (the tasks of
// removed services stop asynchronously).
func removeImages(ctx context.Context, dc *client.Client, out io.Writer) error {
	var err error
	for i := 0; i < 60; i++ {
		var list client.ImageListResult
		if list, err = dc.ImageList(ctx, client.ImageListOptions{}); err != nil {
			return fmt.Errorf("list images: %w", err)
		}
		removed, left := 0, 0
		for _, img := range list.Items {
			// By reference: one image may carry the references of several demo runs (one registry port each),
			// and references that are not the demo's stay.
			for _, ref := range append(img.RepoTags, img.RepoDigests...) {
				if !demoImage.MatchString(ref) {
					continue
				}
				if _, err = dc.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: true}); err != nil {
					left++
					continue
				}
				removed++
			}
		}
		if removed > 0 {
			fmt.Fprintf(out, "%d demo image reference(s) removed\n", removed)
		}
		if left == 0 {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("demo images still in use after 30s: %w", err)
}

// compressedMB is the size of an image's layers as pushed.
func compressedMB(img v1.Image) int64 {
	size := int64(0)
	if layers, err := img.Layers(); err == nil {
		for _, l := range layers {
			if n, err := l.Size(); err == nil {
				size += n
			}
		}
	}
	return size >> 20
}

// openEvents opens a Server-Sent Events stream and waits for its first event (live_py sends its snapshot at
// once), so that what happens afterwards is seen as it happens.
func openEvents(ctx context.Context, url string) (*eventStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	s := &eventStream{body: resp.Body, lines: bufio.NewScanner(resp.Body)}
	if _, err := nextEvent(s, "snapshot"); err != nil {
		s.Close()
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return s, nil
}

type eventStream struct {
	body  io.ReadCloser
	lines *bufio.Scanner
}

func (s *eventStream) Close() error { return s.body.Close() }

// nextEvent reads the stream until an event of the given type and returns its data.
func nextEvent(s *eventStream, want string) (string, error) {
	var typ, data string
	for s.lines.Scan() {
		line := s.lines.Text()
		switch {
		case line == "":
			if typ == want {
				return data, nil
			}
			typ, data = "", ""
		case strings.HasPrefix(line, "event:"):
			typ = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data += strings.TrimSpace(strings.TrimPrefix(line, "data:"))
		}
	}
	if err := s.lines.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("the stream ended before a %q event", want)
}

// portsFree fails early, naming the port and the flag, when a port the demo publishes is taken by something
// else than an earlier demo (whose services hold them until they are updated in place).
func portsFree(ctx context.Context, dc *client.Client, ports ...string) error {
	f := make(client.Filters).Add("label", stack.LabelNamespace+"=demo")
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	if len(svcs.Items) > 0 {
		return nil
	}
	for _, p := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			return fmt.Errorf("port %s is in use: choose others, e.g. make demo DEMO_FLAGS=\"-port 28080 -live-port 28081\" (%w)", p, err)
		}
		l.Close()
	}
	return nil
}
