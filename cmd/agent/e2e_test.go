package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// counting wraps the real client and counts write calls.
type counting struct {
	swarm.Client
	writes atomic.Int64
}

func (c *counting) ServiceCreate(ctx context.Context, o client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	c.writes.Add(1)
	return c.Client.ServiceCreate(ctx, o)
}
func (c *counting) ServiceUpdate(ctx context.Context, id string, o client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	c.writes.Add(1)
	return c.Client.ServiceUpdate(ctx, id, o)
}
func (c *counting) ServiceRemove(ctx context.Context, id string, o client.ServiceRemoveOptions) (client.ServiceRemoveResult, error) {
	c.writes.Add(1)
	return c.Client.ServiceRemove(ctx, id, o)
}
func (c *counting) NetworkCreate(ctx context.Context, name string, o client.NetworkCreateOptions) (client.NetworkCreateResult, error) {
	c.writes.Add(1)
	return c.Client.NetworkCreate(ctx, name, o)
}
func (c *counting) NetworkRemove(ctx context.Context, id string, o client.NetworkRemoveOptions) (client.NetworkRemoveResult, error) {
	c.writes.Add(1)
	return c.Client.NetworkRemove(ctx, id, o)
}
func (c *counting) SecretCreate(ctx context.Context, o client.SecretCreateOptions) (client.SecretCreateResult, error) {
	c.writes.Add(1)
	return c.Client.SecretCreate(ctx, o)
}
func (c *counting) SecretRemove(ctx context.Context, id string, o client.SecretRemoveOptions) (client.SecretRemoveResult, error) {
	c.writes.Add(1)
	return c.Client.SecretRemove(ctx, id, o)
}
func (c *counting) ConfigCreate(ctx context.Context, o client.ConfigCreateOptions) (client.ConfigCreateResult, error) {
	c.writes.Add(1)
	return c.Client.ConfigCreate(ctx, o)
}
func (c *counting) ConfigUpdate(ctx context.Context, id string, o client.ConfigUpdateOptions) (client.ConfigUpdateResult, error) {
	c.writes.Add(1)
	return c.Client.ConfigUpdate(ctx, id, o)
}
func (c *counting) ConfigRemove(ctx context.Context, id string, o client.ConfigRemoveOptions) (client.ConfigRemoveResult, error) {
	c.writes.Add(1)
	return c.Client.ConfigRemove(ctx, id, o)
}

// agentRun runs the agent command line against the test engine.
type agentRun struct {
	code           int
	stdout, stderr string
	writes         int64
}

// runAgent runs the agent command line. Plan, apply and run get --skip-verify unless the test gives --trust:
// the tests of signatures say so explicitly.
func runAgent(t *testing.T, dc *client.Client, args ...string) agentRun {
	t.Helper()
	args = skipVerifyUnlessTrusted(args)
	args = policyOff(args)
	var out, errb bytes.Buffer
	cnt := &counting{Client: dc}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	code := run(ctx, args, deps{stdout: &out, stderr: &errb, connect: func() (swarm.Client, error) { return nopClose{cnt}, nil }})
	t.Logf("agent %s -> exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return agentRun{code: code, stdout: out.String(), stderr: errb.String(), writes: cnt.writes.Load()}
}

// nopClose keeps the shared test client open when a command closes its client.
type nopClose struct{ swarm.Client }

func (nopClose) Close() error { return nil }

func randomName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func get(t *testing.T, url string) string {
	t.Helper()
	var last error
	for i := 0; i < 120; i++ {
		r, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if r.StatusCode == 200 {
				return strings.TrimSpace(string(b))
			}
			err = fmt.Errorf("status %d: %s", r.StatusCode, b)
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

// getNow makes one GET, without retrying: what a user would see at that moment.
func getNow(url string) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	r, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", r.StatusCode, b)
	}
	return strings.TrimSpace(string(b)), nil
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// snapshot is everything the engine says about the stack's objects, for "nothing was touched" checks.
func snapshot(t *testing.T, dc *client.Client, name string) string {
	t.Helper()
	ctx := context.Background()
	var parts []string
	add := func(v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, string(b))
	}
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs.Items {
		if s.Spec.Labels[stack.LabelNamespace] == name {
			add(s)
		}
	}
	nets, _ := dc.NetworkList(ctx, client.NetworkListOptions{})
	for _, n := range nets.Items {
		if n.Labels[stack.LabelNamespace] == name {
			add(n)
		}
	}
	secrets, _ := dc.SecretList(ctx, client.SecretListOptions{})
	for _, s := range secrets.Items {
		if s.Spec.Labels[stack.LabelNamespace] == name {
			add(s)
		}
	}
	configs, _ := dc.ConfigList(ctx, client.ConfigListOptions{})
	for _, c := range configs.Items {
		if c.Spec.Labels[stack.LabelNamespace] == name {
			add(c)
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n")
}

// removeStack deletes everything labelled with the stack's namespace (test cleanup).
func removeStack(dc *client.Client, name string) {
	ctx := context.Background()
	svcs, _ := dc.ServiceList(ctx, client.ServiceListOptions{Filters: make(client.Filters).Add("label", stack.LabelNamespace+"="+name)})
	for _, s := range svcs.Items {
		_, _ = dc.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{})
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		left := 0
		secrets, _ := dc.SecretList(ctx, client.SecretListOptions{Filters: make(client.Filters).Add("label", stack.LabelNamespace+"="+name)})
		for _, s := range secrets.Items {
			if _, err := dc.SecretRemove(ctx, s.ID, client.SecretRemoveOptions{}); err != nil {
				left++
			}
		}
		configs, _ := dc.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("label", stack.LabelNamespace+"="+name)})
		for _, c := range configs.Items {
			if _, err := dc.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
				left++
			}
		}
		nets, _ := dc.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("label", stack.LabelNamespace+"="+name)})
		for _, n := range nets.Items {
			if _, err := dc.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
				left++
			}
		}
		if left == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type fixture struct {
	dir, reg    string
	port        int
	withWorker  bool
	webImage    string
	apiImage    string
	secretValue string
}

func (f fixture) write(t *testing.T) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, "db_password.txt"), []byte(f.secretValue), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "app.conf"), []byte("level=debug\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	worker := ""
	workerConfig := ""
	if f.withWorker {
		worker = `
  worker:
    image: ${REG}/app:v1
    environment:
      MESSAGE: worker
    configs:
      - source: app_conf
        target: /etc/app.conf
    networks: [backend]
    deploy:
      endpoint_mode: dnsrr
`
		workerConfig = `
configs:
  app_conf:
    file: ./app.conf
`
	}
	compose := fmt.Sprintf(`services:
  web:
    image: %s
    environment:
      MESSAGE: web
    secrets: [db_password]
    ports:
      - target: 8080
        published: %d
        mode: host
    networks: [backend]
    deploy:
      endpoint_mode: dnsrr
  api:
    image: %s
    environment:
      MESSAGE: api
    secrets:
      - source: db_password
        target: db_password
        mode: 0400
        uid: "65534"
    healthcheck:
      test: ["CMD", "/testsvc", "-probe", "http://127.0.0.1:8080/healthz"]
      interval: 1s
      timeout: 5s
      retries: 5
      start_period: 20s
    networks: [backend]
    deploy:
      endpoint_mode: dnsrr
      replicas: 2
%s
networks:
  backend: {}
secrets:
  db_password:
    file: ./db_password.txt
%s`, f.webImage, f.port, f.apiImage, worker, workerConfig)
	path := filepath.Join(f.dir, "compose.yaml")
	if err := os.WriteFile(path, []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestApplyEndToEnd(t *testing.T) {
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	testenv.Image(t, reg+"/app:v1", "MESSAGE=v1")
	testenv.Image(t, reg+"/app:v2", "MESSAGE=v2")
	testenv.Image(t, reg+"/app:bad", "EXIT_CODE=3")
	t.Setenv("REG", reg)

	name := randomName("e2e")
	t.Cleanup(func() { removeStack(dc, name) })
	f := fixture{dir: t.TempDir(), reg: reg, port: testenv.FreePort(t), withWorker: true, webImage: reg + "/app:v1", apiImage: reg + "/app:v1", secretValue: "s3cret-one"}
	web := fmt.Sprintf("http://127.0.0.1:%d", f.port)
	file := f.write(t)

	// First deploy: three services, a secret, a config and an overlay network.
	r := runAgent(t, dc, "apply", "-c", file, name, "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("first apply: exit %d: %s", r.code, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, "s3cret-one") {
		t.Fatal("the secret value was printed")
	}
	if got := get(t, web+"/"); got != "web" {
		t.Fatalf("web answered %q", got)
	}
	if got := get(t, web+"/secret/db_password"); got != sha("s3cret-one") {
		t.Fatalf("web sees secret hash %s, want %s", got, sha("s3cret-one"))
	}
	obs, err := swarm.Observe(context.Background(), dc, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs.Services) != 3 || len(obs.Secrets) != 1 || len(obs.Configs) != 1 || len(obs.Networks) != 1 {
		t.Fatalf("observed %d services, %d secrets, %d configs, %d networks; want 3,1,1,1", len(obs.Services), len(obs.Secrets), len(obs.Configs), len(obs.Networks))
	}
	if obs.Networks[0].Driver != "overlay" || obs.Networks[0].Name != name+"_backend" {
		t.Fatalf("network %+v", obs.Networks[0])
	}
	for _, s := range obs.Services {
		if !stack.OwnedBy(s.Spec.Labels, name, "") {
			t.Fatalf("service %s lacks the owner labels: %v", s.Name, s.Spec.Labels)
		}
	}
	oldSecret := obs.Secrets[0].Name

	// A no-op re-apply makes no write call.
	r = runAgent(t, dc, "apply", "-c", file, name)
	if r.code != 0 || r.writes != 0 {
		t.Fatalf("no-op apply: exit %d, %d writes (want 0, 0)", r.code, r.writes)
	}
	if !strings.Contains(r.stdout, "0 created, 0 configured, 6 unchanged, 0 deleted") {
		t.Fatalf("no-op plan output:\n%s", r.stdout)
	}

	// Plan shows a change and writes nothing.
	f.webImage = reg + "/app:v2"
	file = f.write(t)
	r = runAgent(t, dc, "plan", "-c", file, name)
	if r.code != 0 || r.writes != 0 {
		t.Fatalf("plan: exit %d, %d writes", r.code, r.writes)
	}
	if !strings.Contains(r.stdout, name+"_web") || !strings.Contains(r.stdout, "configured") || !strings.Contains(r.stdout, "app:v1 -> "+reg+"/app:v2") {
		t.Fatalf("plan does not show the image change:\n%s", r.stdout)
	}
	f.webImage = reg + "/app:v1"

	// Secret rotation: a new object with a new hashed name, services move to it; the superseded one stays
	// while a rollback could still need it.
	f.secretValue = "s3cret-two"
	file = f.write(t)
	r = runAgent(t, dc, "apply", "-c", file, name, "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("rotation apply: exit %d", r.code)
	}
	if strings.Contains(r.stdout+r.stderr, "s3cret-two") {
		t.Fatal("the secret value was printed")
	}
	if got := get(t, web+"/secret/db_password"); got != sha("s3cret-two") {
		t.Fatalf("after rotation web sees %s, want %s", got, sha("s3cret-two"))
	}
	obs, _ = swarm.Observe(context.Background(), dc, name)
	names := map[string]bool{}
	for _, s := range obs.Secrets {
		names[s.Name] = true
	}
	if len(obs.Secrets) != 2 || !names[oldSecret] {
		t.Fatalf("after rotation secrets %v; want the new one and %s (kept for rollback)", names, oldSecret)
	}

	// Removing a service prunes it and the config only it used; the next rollout also drops the secret no
	// rollback needs any more.
	f.withWorker = false
	f.webImage = reg + "/app:v2"
	f.apiImage = reg + "/app:v2"
	file = f.write(t)
	r = runAgent(t, dc, "apply", "-c", file, name, "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("prune apply: exit %d", r.code)
	}
	if got := get(t, web+"/"); got != "web" {
		t.Fatalf("web answered %q", got)
	}
	obs, _ = swarm.Observe(context.Background(), dc, name)
	if len(obs.Services) != 2 || len(obs.Configs) != 0 {
		t.Fatalf("after prune: %d services, %d configs; want 2, 0", len(obs.Services), len(obs.Configs))
	}
	for _, s := range obs.Secrets {
		if s.Name == oldSecret {
			t.Fatalf("superseded secret %s still there after a rollout that no longer needs it", oldSecret)
		}
	}

	// A failing update exits 1 naming the service and the task error, and the previous version serves.
	before := get(t, web+"/secret/db_password")
	f.webImage = reg + "/app:bad"
	file = f.write(t)
	r = runAgent(t, dc, "apply", "-c", file, name, "--timeout", "90s")
	if r.code != 1 {
		t.Fatalf("failing update: exit %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, name+"_web") || !strings.Contains(r.stderr, "exit code 3") {
		t.Fatalf("the error does not name the service and the task error:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "rolled back: "+name+"_web") {
		t.Fatalf("output does not say the service was rolled back:\n%s", r.stdout)
	}
	if got := get(t, web+"/secret/db_password"); got != before {
		t.Fatalf("after the failed update web answers %q, want the previous version's %q", got, before)
	}
	svc, err := dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := svc.Service.Spec.TaskTemplate.ContainerSpec.Image; img != reg+"/app:v2" {
		t.Fatalf("after rollback the service runs %s, want %s/app:v2", img, reg)
	}

	// Invalid input exits 2 and leaves the swarm byte for byte as it was.
	snap := snapshot(t, dc, name)
	bad := map[string]string{
		"unknown key":    "services:\n  web:\n    image: x\n    colour: blue\n",
		"malformed yaml": "services:\n  web: [\n",
		"no image":       "services:\n  web:\n    environment: {A: b}\n",
		"missing secret": "services:\n  web:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    file: ./nope.txt\n",
		"missing env":    "services:\n  web:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    environment: SAWMILL_TEST_UNSET_VAR\n",
	}
	for what, content := range bad {
		p := filepath.Join(f.dir, "bad.yaml")
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		r = runAgent(t, dc, "apply", "-c", p, name)
		if r.code != 2 || r.writes != 0 {
			t.Errorf("%s: exit %d with %d writes, want 2 and 0", what, r.code, r.writes)
		}
		if !strings.Contains(r.stderr, "bad.yaml") {
			t.Errorf("%s: the error does not name the file:\n%s", what, r.stderr)
		}
	}
	if after := snapshot(t, dc, name); after != snap {
		t.Fatalf("invalid input changed the swarm")
	}
}

// A healthcheck that never passes makes Swarm roll the update back by itself (failure_action: rollback);
// the agent reports that as a failed rollout, never as success, and the previous version keeps running.
func TestSwarmAutoRollbackIsAFailure(t *testing.T) {
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	testenv.Image(t, reg+"/app:v1", "MESSAGE=v1")
	name := randomName("e2erb")
	t.Cleanup(func() { removeStack(dc, name) })
	dir := t.TempDir()
	port := testenv.FreePort(t)
	write := func(unhealthy string, constraints ...string) string {
		c := fmt.Sprintf(`services:
  app:
    image: %s/app:v1
    environment:
      MESSAGE: app
      UNHEALTHY: "%s"
    ports:
      - {target: 8080, published: %d, mode: host}
    healthcheck:
      test: ["CMD", "/testsvc", "-probe", "http://127.0.0.1:8080/healthz"]
      interval: 1s
      timeout: 5s
      retries: 3
    deploy:
      endpoint_mode: dnsrr
      update_config:
        failure_action: rollback
        monitor: 20s
      placement:
        constraints: [%s]
`, reg, unhealthy, port, strings.Join(constraints, ", "))
		p := filepath.Join(dir, "compose.yaml")
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if r := runAgent(t, dc, "apply", "-c", write(""), name, "--timeout", "2m"); r.code != 0 {
		t.Fatalf("first apply: exit %d", r.code)
	}
	r := runAgent(t, dc, "apply", "-c", write("yes"), name, "--timeout", "2m")
	if r.code != 1 {
		t.Fatalf("an update Swarm rolled back: exit %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, name+"_app") || !strings.Contains(r.stderr, "rolled the update back") {
		t.Fatalf("the error does not say Swarm rolled %s_app back:\n%s", name, r.stderr)
	}
	// The agent says so only once the previous version runs again: it answers at once, no retry.
	if got, err := getNow(fmt.Sprintf("http://127.0.0.1:%d/healthz", port)); err != nil || got != "ok" {
		t.Fatalf("right after the agent said it rolled back, the previous version does not serve: %q %v", got, err)
	}

	// An update that cannot be scheduled times out; the agent rolls it back itself.
	r = runAgent(t, dc, "apply", "-c", write("", "node.labels.sawmill-nowhere == true"), name, "--timeout", "10s")
	if r.code != 1 || !strings.Contains(r.stderr, "did not converge within 10s") {
		t.Fatalf("timeout: exit %d, want 1 with the timeout named:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "rolled back: "+name+"_app") {
		t.Fatalf("the timed-out update was not rolled back:\n%s", r.stdout)
	}
	if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", port)); got != "ok" {
		t.Fatalf("after the timeout the previous version does not serve: %q", got)
	}
}

func skipVerifyUnlessTrusted(args []string) []string {
	if len(args) == 0 || (args[0] != "plan" && args[0] != "apply" && args[0] != "run") {
		return args
	}
	for _, a := range args {
		if a == "--trust" || strings.HasPrefix(a, "--trust=") || a == "--skip-verify" || strings.HasPrefix(a, "--skip-verify=") {
			return args
		}
	}
	return append(append([]string(nil), args...), "--skip-verify")
}
