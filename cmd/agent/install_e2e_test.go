package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// staticAgentBinary builds this agent statically, as the image's build stage does.
func staticAgentBinary(t *testing.T) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version=e2e", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// agentImage pushes an agent image built offline as images/agent/Dockerfile builds it (the binary FROM
// scratch, nobody, the state directory owned by nobody); args, when given, break its command line.
func agentImage(t *testing.T, bin []byte, ref, version string, args ...string) string {
	t.Helper()
	img, err := imagebuild.Image(imagebuild.Spec{Binary: bin, Name: "agent", Args: args, User: "65534:65534",
		Env: []string{"SAWMILL_IMAGE_VERSION=" + version}, Dirs: []string{"/var/lib/sawmill-agent"}, UID: 65534, GID: 65534})
	if err != nil {
		t.Fatal(err)
	}
	d, err := imagebuild.Push(img, ref)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The test's override of stacks/agent: the test registry and the GitLab stand-in listen on the host's
// loopback, so the agent joins the node's network (granted below), and listens on a Unix socket of its
// container, so that the two tasks of a start-first update never compete for a port.
const agentE2EOverride = `services:
  agent:
    environment:
      SAWMILL_LISTEN: unix:///run/sawmill/agent.sock
    networks: !override [hostnet]
    volumes:
      - {type: tmpfs, target: /run/sawmill}
    deploy:
      labels:
        io.sawmill.exception.host_network: "the test's registry and GitLab stand-in listen on the host's loopback"
networks:
  hostnet:
    external: true
    name: host
`

const demoCompose = `services:
  web:
    image: %s
    environment:
      MESSAGE: demo
    healthcheck:
      test: ["CMD", "/testsvc", "-probe", "http://127.0.0.1:8080/healthz"]
      interval: 2s
      timeout: 2s
      retries: 3
      start_period: 2s
    deploy:
      endpoint_mode: dnsrr
      resources: {limits: {cpus: "0.2", memory: 64M}}
      restart_policy: {condition: any}
      update_config: {failure_action: rollback, monitor: 10s}
`

// demoImages are the images of examples/demo the release pins, built offline as hack/demo builds them.
type demoImages struct{ goIngest, livePy, postgres string }

// buildDemoImages builds go_ingest (a static binary FROM scratch), live_py and PostgreSQL (from this
// machine's Debian packages), pushes them to reg and signs them with key, as hack/demo does.
func buildDemoImages(t *testing.T, reg string, key testenv.Key) demoImages {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "go_ingest")
	goBuildStatic(t, "../../images/go_ingest", bin, "")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	ingest, err := imagebuild.Image(imagebuild.Spec{Binary: b, Name: "go_ingest", User: "65534:65534", ExposedPort: "8080",
		Env: []string{"INGEST_LISTEN=:8080", "INGEST_TOKEN_FILE=/run/secrets/ingest_token"}})
	if err != nil {
		t.Fatal(err)
	}
	live, err := imagebuild.LivePyDebian(filepath.Join("..", "..", "images", "live_py"))
	if err != nil {
		t.Fatal(err)
	}
	pg, err := imagebuild.PostgresDebian()
	if err != nil {
		t.Fatal(err)
	}
	var out demoImages
	for _, im := range []struct {
		img  v1.Image
		repo string
		ref  *string
	}{{ingest, reg + "/go_ingest:v1", &out.goIngest}, {live, reg + "/live_py:v1", &out.livePy}, {pg, reg + "/postgres:debian", &out.postgres}} {
		d, err := imagebuild.Push(im.img, im.repo)
		if err != nil {
			t.Fatal(err)
		}
		key.Sign(t, im.repo[:strings.LastIndex(im.repo, ":")]+"@"+d)
		*im.ref = im.repo + "@" + d
	}
	return out
}

// selfRelease is a release (the deploy job's artifact) of the agent's stack, the repository's
// stacks/agent/compose.yaml with the agent image pinned plus the test's override, and the demo stack,
// examples/demo/compose.yaml with go_ingest and live_py pinned as `pipegen release` pins them.
func selfRelease(t *testing.T, commit, agentStack, agentRef, demoStack string, demo demoImages) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "stacks", "agent", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	compose := strings.Replace(string(raw), "${REGISTRY}/agent:${TAG:-latest}", agentRef, 1)
	demoRaw, err := os.ReadFile(filepath.Join("..", "..", "examples", "demo", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	demoCompose := strings.NewReplacer("${REGISTRY}/go_ingest:${TAG:-latest}", demo.goIngest, "${REGISTRY}/live_py:${TAG:-latest}", demo.livePy).Replace(string(demoRaw))
	a, d := "stacks/"+agentStack+"/", "stacks/"+demoStack+"/"
	m := map[string]any{
		"schema_version": 1, "project": "sawmill/platform", "commit": commit, "ref": "main",
		"pipeline": map[string]any{"id": 1, "url": ""}, "registry": "", "channel": "release-main",
		"images": map[string]any{},
		"stacks": map[string]any{
			agentStack: map[string]any{"files": []string{a + "compose.yaml", a + "compose.e2e.yaml"},
				"environments": map[string]any{"e2e": []string{a + "compose.yaml", a + "compose.e2e.yaml"}}},
			demoStack: map[string]any{"files": []string{d + "compose.yaml"}},
		},
	}
	b, _ := json.Marshal(m)
	return map[string]string{
		"release/release.json":              string(b),
		"release/" + a + "compose.yaml":     compose,
		"release/" + a + "compose.e2e.yaml": agentE2EOverride,
		"release/" + d + "compose.yaml":     demoCompose,
	}
}

// removeInstalled removes what an install test made: the agent's stack first (it would put the others
// back), the other stacks, the objects install made, the lease, the agent's state volume, and the images
// the engine pulled from the test registry reg.
func removeInstalled(dc *client.Client, agentStack, leaseName, reg string, stacks ...string) {
	ctx := context.Background()
	// A running agent puts back what it finds missing of its own stack: `agent uninstall` takes the lease
	// from it first (a no-op when the test uninstalled it already).
	var out bytes.Buffer
	_ = run(ctx, []string{"uninstall", "--stack", agentStack, "--lease-name", leaseName, "--lease-ttl", "6s"},
		deps{stdout: &out, stderr: &out, connect: func() (swarm.Client, error) { return nopClose{dc}, nil }})
	removeStack(dc, agentStack)
	for _, s := range stacks {
		removeStack(dc, s)
	}
	for _, n := range []string{installConfigName, installGitLabToken, installWebhookName} {
		_, _ = dc.SecretRemove(ctx, n, client.SecretRemoveOptions{})
		_, _ = dc.ConfigRemove(ctx, n, client.ConfigRemoveOptions{})
	}
	_, _ = dc.ConfigRemove(ctx, leaseName, client.ConfigRemoveOptions{})
	removeStackVolumes(dc, agentStack)
	removeRegistryImages(dc, reg)
}

// engineSocket is the test engine's Unix socket, which the agent's service mounts, and the socket's group.
func engineSocket(t *testing.T) (string, uint32) {
	t.Helper()
	host := os.Getenv(testenv.DockerHostEnv)
	sock, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		t.Skipf("the agent's service mounts the engine's socket: %s is not a Unix socket", host)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	return sock, fi.Sys().(*syscall.Stat_t).Gid
}

// operatorConfig is the operator's agent.yaml of the install tests: the GitLab stand-in, the test's lease,
// and a trust policy requiring the key in cosign.pub on every image of the registry. The grants and the
// allowed host path are what let the agent's stack mount the socket (stacks/agent/README.md); the release
// only asks. grants and variables add to those lists (variables: ", KEY: value" text).
type operatorConfig struct {
	gitlab, lease, agentStack, sock, registry string
	gid                                       uint32
	gitlabVariables                           bool
	grants                                    []string
	variables                                 string
}

func (c operatorConfig) String() string {
	grants := ""
	for _, g := range c.grants {
		grants += "  - " + g + "\n"
	}
	return fmt.Sprintf(`environment: e2e
source: gitlab
gitlab: {url: %s, project: sawmill/platform, variables: %t}
interval: 2s
jitter: 0.1
timeout: 3m
lease: {ttl: 6s, name: %s}
tier: staging
grants:
  - {rule: docker_socket, stack: %s, service: agent}
  - {rule: host_network, stack: %s, service: agent}
%sallowed_host_paths: [%s]
variables: {DOCKER_GID: "%d", DOCKER_SOCKET: %s%s}
allowed_registries: [%s]
trust:
  rules:
    - pattern: %s/**
      authorities: [{name: release, key: cosign.pub}]
`, c.gitlab, c.gitlabVariables, c.lease, c.agentStack, c.agentStack, grants, c.sock, c.gid, c.sock, c.variables, c.registry, c.registry)
}

// leaseWatch records every holder of the lease (Swarm config labels) over time.
type leaseWatch struct {
	mu      sync.Mutex
	holders []string
	empty   time.Duration // the longest time nobody held it
	stop    chan struct{}
	done    chan struct{}
}

func watchLease(dc *client.Client, name string) *leaseWatch {
	w := &leaseWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var emptySince time.Time
		for {
			l, err := dc.ConfigList(context.Background(), client.ConfigListOptions{Filters: make(client.Filters).Add("name", name)})
			if err == nil {
				for _, c := range l.Items {
					if c.Spec.Name != name {
						continue
					}
					h := c.Spec.Labels["io.sawmill.lease.holder"]
					w.mu.Lock()
					if h == "" {
						if emptySince.IsZero() {
							emptySince = time.Now()
						}
					} else {
						if !emptySince.IsZero() {
							w.empty = max(w.empty, time.Since(emptySince))
							emptySince = time.Time{}
						}
						if n := len(w.holders); n == 0 || w.holders[n-1] != h {
							w.holders = append(w.holders, h)
						}
					}
					w.mu.Unlock()
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *leaseWatch) result() ([]string, time.Duration) {
	close(w.stop)
	<-w.done
	return w.holders, w.empty
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
}

// TestInstallAndSelfUpgrade: `agent install` puts the agent on the swarm as a service from its release
// (the image's signature verified against the trust policy it installs, the stack checked with the
// operator's grants); the service deploys the demo stack, then follows a new release of its own stack:
// start-first, the lease handed over once and never held by two, the demo stack untouched; a broken agent
// version is rolled back and the failure reported; `agent uninstall` leaves the demo stack running.
func TestInstallAndSelfUpgrade(t *testing.T) {
	dc := testenv.Docker(t)
	sock, gid := engineSocket(t)
	ctx := context.Background()
	reg := testenv.Registry(t)
	key := testenv.NewKey(t)
	bin := staticAgentBinary(t)
	agentStack, demoStack, leaseName := randomName("agent"), randomName("demo"), randomName("lease")
	t.Cleanup(func() { removeInstalled(dc, agentStack, leaseName, reg, demoStack) })

	unsigned := agentImage(t, bin, reg+"/agent:v0", "v0")
	d1 := agentImage(t, bin, reg+"/agent:v1", "v1")
	d2 := agentImage(t, bin, reg+"/agent:v2", "v2")
	d3 := agentImage(t, bin, reg+"/agent:v3", "v3", "no-such-command") // exits 2 at once
	for _, ref := range []string{reg + "/agent@" + d1, reg + "/agent@" + d2, reg + "/agent@" + d3} {
		key.Sign(t, ref)
	}
	demo := buildDemoImages(t, reg, key)
	demoPort, livePort := testenv.FreePort(t), testenv.FreePort(t)

	gl := testenv.NewGitLab("glpat-e2e", "sawmill/platform")
	// The demo's secrets: CI/CD variables of the environment, which the agent reads from GitLab.
	gl.SetVariables(testenv.Variable{Key: "DEMO_DB_PASSWORD", Value: randomName("pw"), Scope: "e2e"},
		testenv.Variable{Key: "DEMO_INGEST_TOKEN", Value: randomName("tok"), Scope: "e2e"})
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("cosign.pub", key.PublicPEM)
	tokenFile := write("gitlab-token", "glpat-e2e\n")
	cfgFile := write("agent.yaml", operatorConfig{gitlab: srv.URL, lease: leaseName, agentStack: agentStack, sock: sock, gid: gid, registry: reg,
		gitlabVariables: true,
		grants:          []string{"{rule: published_ports, stack: " + demoStack + ", service: go_ingest}", "{rule: published_ports, stack: " + demoStack + ", service: live_py}"},
		variables:       fmt.Sprintf(", POSTGRES_IMAGE: %s, DEMO_PORT: \"%d\", DEMO_LIVE_PORT: \"%d\"", demo.postgres, demoPort, livePort),
	}.String())

	var cmu sync.Mutex
	commits := map[string]int{}
	deploy := func(id int64, agentRef string) string {
		commit := strings.Repeat(fmt.Sprint(id), 40)
		cmu.Lock()
		commits[commit] = int(id)
		cmu.Unlock()
		gl.AddDeployment(testenv.Deployment{ID: id, Job: 100 + id, Pipeline: id, Environment: "e2e", Status: "success", SHA: commit, Ref: "main",
			Finished: time.Date(2026, 1, 1, 0, int(id), 0, 0, time.UTC)}, selfRelease(t, commit, agentStack, agentRef, demoStack, demo))
		return commit
	}
	install := func() agentRun {
		var out, errb bytes.Buffer
		ictx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		defer cancel()
		code := run(ictx, []string{"install", "--config", cfgFile, "--token-file", tokenFile, "--stack", agentStack},
			deps{stdout: &out, stderr: &errb, connect: func() (swarm.Client, error) { return nopClose{dc}, nil }})
		t.Logf("agent install -> exit %d\n%s%s", code, out.String(), errb.String())
		return agentRun{code: code, stdout: out.String(), stderr: errb.String()}
	}
	agentSvc := agentStack + "_agent"
	service := func() (image, update string) {
		r, err := dc.ServiceInspect(ctx, agentSvc, client.ServiceInspectOptions{})
		if err != nil {
			return "", err.Error()
		}
		if us := r.Service.UpdateStatus; us != nil {
			update = string(us.State)
		}
		return r.Service.Spec.TaskTemplate.ContainerSpec.Image, update
	}
	status := func(commit string) string {
		state := ""
		for _, s := range gl.Statuses() {
			if s.SHA == commit && s.Name == "sawmill/e2e" {
				state = s.State
			}
		}
		return state
	}

	// 1. A release whose agent image is not signed by the trusted key: install refuses it, creates no service.
	deploy(1, reg+"/agent:v0@"+unsigned)
	if r := install(); r.code != 3 {
		t.Fatalf("install of an unsigned agent image: exit %d, want 3", r.code)
	}
	if _, err := dc.ServiceInspect(ctx, agentSvc, client.ServiceInspectOptions{}); err == nil {
		t.Fatal("install created the agent's service from an unsigned image")
	}

	// 2. The signed release: install runs, the agent service deploys the demo stack and reports success.
	c2 := deploy(2, reg+"/agent:v1@"+d1)
	if r := install(); r.code != 0 || !strings.Contains(r.stdout, "installed") {
		t.Fatalf("install: exit %d", r.code)
	}
	if img, _ := service(); img != reg+"/agent:v1@"+d1 {
		t.Fatalf("the agent's service runs %q, want the signed v1", img)
	}
	waitUntil(t, "the agent service deploys the demo and reports success", 3*time.Minute, func() (bool, string) {
		return status(c2) == "success", "status " + status(c2)
	})
	// Installing again with the same files changes nothing: the objects are kept, the running agent acts.
	if r := install(); r.code != 0 || !strings.Contains(r.stdout, "an agent already acts") {
		t.Errorf("a second install: exit %d, want 0 and the running agent left to act", r.code)
	}
	// The demo stack (examples/demo) runs the signed images and answers: go_ingest is healthy once it
	// reaches PostgreSQL, live_py serves its page.
	demoServices := map[string]string{demoStack + "_postgres": demo.postgres, demoStack + "_go_ingest": demo.goIngest, demoStack + "_live_py": demo.livePy}
	for svc, want := range demoServices {
		d, err := dc.ServiceInspect(ctx, svc, client.ServiceInspectOptions{})
		if err != nil {
			t.Fatalf("the demo stack was not deployed: %v", err)
		}
		if got := d.Service.Spec.TaskTemplate.ContainerSpec.Image; got != want {
			t.Fatalf("%s runs %s, want %s", svc, got, want)
		}
	}
	for _, url := range []string{fmt.Sprintf("http://127.0.0.1:%d/healthz", demoPort), fmt.Sprintf("http://127.0.0.1:%d/", livePort)} {
		get(t, url)
	}
	// What must not change while the agent upgrades itself: each demo service's version and running tasks.
	demoState := func() string {
		var out []string
		for _, svc := range slices.Sorted(maps.Keys(demoServices)) {
			d, err := dc.ServiceInspect(ctx, svc, client.ServiceInspectOptions{})
			if err != nil {
				out = append(out, svc+": "+err.Error())
				continue
			}
			l, _ := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", d.Service.ID).Add("desired-state", "running")})
			var ids []string
			for _, tk := range l.Items {
				ids = append(ids, tk.ID+"="+string(tk.Status.State))
			}
			sort.Strings(ids)
			out = append(out, fmt.Sprintf("%s@%d[%s]", svc, d.Service.Version.Index, strings.Join(ids, ",")))
		}
		return strings.Join(out, " ")
	}
	demoBefore := demoState()

	// 3. A new agent version: the running agent rolls its own service out, start-first; the new one stands
	// by until the old one stops and gives the lease up, then acts and reports the release.
	leaseHolder := func() string {
		l, _ := dc.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", leaseName)})
		for _, c := range l.Items {
			if c.Spec.Name == leaseName {
				return c.Spec.Labels["io.sawmill.lease.holder"]
			}
		}
		return ""
	}
	before := leaseHolder()
	if before == "" || strings.HasPrefix(before, "agent-install/") {
		t.Fatalf("the agent service does not hold the lease: %q", before)
	}
	watch := watchLease(dc, leaseName)
	c3 := deploy(3, reg+"/agent:v2@"+d2)
	waitUntil(t, "the agent upgrades itself to v2 and reports the release", 3*time.Minute, func() (bool, string) {
		img, us := service()
		return img == reg+"/agent:v2@"+d2 && status(c3) == "success", fmt.Sprintf("image %s update %s status %q", img, us, status(c3))
	})
	time.Sleep(5 * time.Second) // a few more cycles of the new agent
	holders, empty := watch.result()
	t.Logf("lease holders during the upgrade: %v; longest time without a holder: %s", holders, empty)
	// The agents share the node's network, hence its host name: the holders differ by their nonce. The one
	// before is the v1 agent (the only one then); the one after holds the lease now, when only v2 runs.
	running := 0
	tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", agentSvc).Add("desired-state", "running")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks.Items {
		running++
		if img := tk.Spec.ContainerSpec.Image; img != reg+"/agent:v2@"+d2 {
			t.Errorf("a task of %s still runs after the upgrade", img)
		}
	}
	if running != 1 {
		t.Errorf("%d agent tasks run after the upgrade, want 1", running)
	}
	if len(holders) != 2 || holders[0] != before || holders[1] != leaseHolder() {
		t.Errorf("the lease went %v (before %s, now %s), want from the v1 agent to the v2 agent once", holders, before, leaseHolder())
	}
	// The old agent gives the lease up when it stops: the new one takes it at its next cycle (2s ± 10%).
	if empty > 4*time.Second {
		t.Errorf("nobody held the lease for %s: a cycle was missed", empty)
	}
	for _, s := range gl.Statuses() {
		if s.State != "success" {
			t.Errorf("GitLab was told %s for commit %s (%s): %s", s.State, s.SHA[:7], s.Name, s.Description)
		}
	}
	if now := demoState(); now != demoBefore {
		t.Errorf("the demo stack was touched by the upgrade: %s -> %s", demoBefore, now)
	}

	// 4. A broken agent version: it never becomes healthy, Swarm rolls it back, the agent that stayed up
	// reports the failure; the demo stack is untouched.
	c4 := deploy(4, reg+"/agent:v3@"+d3)
	waitUntil(t, "the broken version is rolled back and reported", 4*time.Minute, func() (bool, string) {
		img, us := service()
		return img == reg+"/agent:v2@"+d2 && status(c4) == "failed", fmt.Sprintf("image %s update %s status %q", img, us, status(c4))
	})
	if _, us := service(); !strings.HasPrefix(us, "rollback") {
		t.Errorf("update state %q, want a rollback", us)
	}
	if now := demoState(); now != demoBefore {
		t.Errorf("the demo stack was touched: %s -> %s", demoBefore, now)
	}

	// 5. Uninstall: the agent goes, the demo stays.
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"uninstall", "--stack", agentStack, "--lease-name", leaseName, "--lease-ttl", "6s"}, deps{stdout: &out, stderr: &errb, connect: func() (swarm.Client, error) { return nopClose{dc}, nil }}); code != 0 {
		t.Fatalf("uninstall: exit %d\n%s%s", code, out.String(), errb.String())
	}
	t.Logf("agent uninstall:\n%s", out.String())
	if _, err := dc.ServiceInspect(ctx, agentSvc, client.ServiceInspectOptions{}); err == nil {
		t.Error("the agent's service is still there after uninstall")
	}
	for _, n := range []string{installGitLabToken, installWebhookName} {
		if _, err := dc.SecretInspect(ctx, n, client.SecretInspectOptions{}); err == nil {
			t.Errorf("secret %s is still there after uninstall", n)
		}
	}
	if now := demoState(); now != demoBefore {
		t.Errorf("uninstall touched the demo stack: %s -> %s", demoBefore, now)
	}
}
