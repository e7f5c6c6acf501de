package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/sopsfile"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// writeRelease writes a release directory of one stack: release.json (commit) and the stack's compose file,
// with more files beside it.
func writeRelease(t *testing.T, dir, stackName, commit, image, compose string, more map[string][]byte) {
	t.Helper()
	files := release(stackName, commit, image, 0, "")
	files["release/stacks/"+stackName+"/compose.yaml"] = compose
	for name, content := range files {
		p := filepath.Join(dir, strings.TrimPrefix(name, "release/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, p, content)
	}
	for name, b := range more {
		if err := os.WriteFile(filepath.Join(dir, "stacks", stackName, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// swarmStack is what a daemon test on the private swarm needs: the engine, the test service's image in the
// test registry (pinned), and a stack name of its own (removed at the end, with its own lease).
func swarmStack(t *testing.T, prefix string) (*client.Client, string, string) {
	t.Helper()
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	_, digest := testenv.Image(t, reg+"/web:v1", "MESSAGE=v1")
	name := randomName(prefix)
	lease := "sawmill-test-lease-" + name
	t.Cleanup(func() {
		removeStack(dc, name)
		_, _ = dc.ConfigRemove(context.Background(), lease, client.ConfigRemoveOptions{})
	})
	t.Setenv("SAWMILL_LEASE_NAME", lease)
	return dc, reg + "/web:v1@" + digest, name
}

// hookReceiver is a local HTTP server that records the notifications it is sent.
type hookReceiver struct {
	mu     sync.Mutex
	events []map[string]any
}

func newHookReceiver(t *testing.T) (*hookReceiver, string) {
	h := &hookReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("notification %s: %v", b, err)
		}
		h.mu.Lock()
		h.events = append(h.events, m)
		h.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return h, srv.URL + "/hooks/T000/SECRET-PATH"
}

func (h *hookReceiver) got() []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]map[string]any(nil), h.events...)
}

// The daemon on the private swarm: a release refused by the policies, cycle after cycle, is one notification;
// the next release that deploys is one recovery, with the count of refused cycles; a change made outside the
// agent is put back and notified once. The webhook URL (a secret) is never in the agent's output.
func TestDaemonNotifiesARefusalOnceThenTheRecovery(t *testing.T) {
	dc, image, name := swarmStack(t, "ntf")
	hooks, url := newHookReceiver(t)
	t.Setenv("SAWMILL_TEST_NOTIFY_URL", url)

	rel := t.TempDir()
	// A stack the default policies pass, but for privileged mode.
	compose := func(privileged bool) string {
		return fmt.Sprintf(`services:
  web:
    image: %s
    privileged: %t
    healthcheck:
      test: ["CMD", "/testsvc", "-probe", "http://127.0.0.1:8080/healthz"]
      interval: 1s
    deploy:
      endpoint_mode: dnsrr
      resources: {limits: {cpus: "0.5", memory: 64M}}
      update_config: {failure_action: rollback}
`, image, privileged)
	}
	writeRelease(t, rel, name, strings.Repeat("a", 40), image, compose(true), nil)
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, fmt.Sprintf(`environment: staging
source: dir
dir: %s
interval: 1s
jitter: 0
tier: development
skip_verify: true
policy_mode: warn
notify:
  - name: ops
    kind: webhook
    url_env: SAWMILL_TEST_NOTIFY_URL
    on: [refusal, recovery, failure, drift]
`, rel))
	// Warn mode would deploy it: enforce the policies by flag (a flag wins over the file).
	d := startDaemon(t, dc, "--config", cfg, "--state-dir", t.TempDir(), "--policy-mode", "enforce", "--timeout", "2m")
	refused := func() int { return strings.Count(d.output(), "outcome=refused") }
	waitFor(t, "three refused cycles", time.Minute, func() bool { return refused() >= 3 })
	if ev := hooks.got(); len(ev) != 1 || ev[0]["kind"] != "refusal" || ev[0]["stack"] != name || ev[0]["count"] != 1.0 || !strings.Contains(fmt.Sprint(ev[0]["reason"]), "privileged") {
		t.Fatalf("after %d refused cycles the receiver got %v, want one refusal", refused(), ev)
	}

	writeRelease(t, rel, name, strings.Repeat("b", 40), image, compose(false), nil)
	waitFor(t, "the recovery", 2*time.Minute, func() bool { return len(hooks.got()) >= 2 })
	ev := hooks.got()
	if len(ev) != 2 || ev[1]["kind"] != "recovery" || ev[1]["outcome"] != "success" || ev[1]["release"] != "commit-"+strings.Repeat("b", 40) ||
		ev[1]["count"] != float64(refused()) || !strings.HasPrefix(fmt.Sprint(ev[1]["previous"]), "refusal: ") {
		t.Fatalf("after %d refused cycles and a deployed release the receiver got %v", refused(), ev)
	}

	// Someone changes the service outside the agent: the next cycle puts it back, and says so once.
	svc, err := dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := svc.Service.Spec
	cs := *spec.TaskTemplate.ContainerSpec
	cs.Env = append(cs.Env, "INJECTED=1")
	spec.TaskTemplate.ContainerSpec = &cs
	if _, err := dc.ServiceUpdate(context.Background(), svc.Service.ID, client.ServiceUpdateOptions{Version: svc.Service.Version, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the drift notification", 2*time.Minute, func() bool { return len(hooks.got()) >= 3 })
	waitFor(t, "two more cycles", time.Minute, func() bool { return strings.Count(d.output(), "outcome=success") >= 3 })
	d.halt()
	ev = hooks.got()
	if len(ev) != 3 || ev[2]["kind"] != "drift" || ev[2]["stack"] != name || ev[2]["reason"] != "put back: "+name+"/"+name+"_web" {
		t.Fatalf("after the drift the receiver got %v", ev)
	}
	if strings.Contains(d.output(), "SECRET-PATH") {
		t.Fatalf("the webhook URL is in the agent's output:\n%s", d.output())
	}
}

// A SOPS-encrypted secret of a release reaches the running service (it serves the secret file's hash), and
// its value is nowhere the agent writes: its output, its state directory, /status. A file the agent cannot
// decrypt is exit 2 naming the file, and what runs is not touched.
func TestSOPSSecretReachesTheService(t *testing.T) {
	dc, image, name := swarmStack(t, "sops")
	port := testenv.FreePort(t)

	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "age.key")
	if err := os.WriteFile(keyFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	value := randomName("sops-value-")
	encrypted := func(to *age.X25519Identity) []byte {
		b, err := sopsfile.Encrypt("db.sops.yaml", []byte("db:\n  user: shop\n  password: "+value+"\n"), to.Recipient().String())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	compose := fmt.Sprintf(`services:
  web:
    image: %s
    secrets: [db_password]
    ports:
      - {target: 8080, published: %d, mode: host}
    deploy: {endpoint_mode: dnsrr}
secrets:
  db_password:
    file: ./db.sops.yaml
    x-sawmill-sops: db.password
`, image, port)
	rel := t.TempDir()
	writeRelease(t, rel, name, strings.Repeat("c", 40), image, compose, map[string][]byte{"db.sops.yaml": encrypted(id)})
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, fmt.Sprintf("environment: staging\nsource: dir\ndir: %s\ninterval: 1h\nskip_verify: true\npolicy_mode: off\nsops: {age_key_file: %s, helper: %s}\n", rel, keyFile, sopsHelperBinary(t)))

	d := startDaemon(t, dc, "--config", cfg, "--state-dir", state, "--timeout", "2m")
	waitFor(t, "the release deployed", 2*time.Minute, func() bool { return d.status(t)["outcome"] == "success" })
	web := fmt.Sprintf("http://127.0.0.1:%d", port)
	if got := get(t, web+"/secret/db_password"); got != sha(value) {
		t.Fatalf("the service's /run/secrets/db_password has hash %s, want the SOPS value's %s", got, sha(value))
	}
	resp, err := http.Get("http://" + d.addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	status, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d.halt()
	assertNowhere := func(value string, status string, out string) {
		t.Helper()
		if strings.Contains(status, value) {
			t.Fatalf("/status holds the secret value: %s", status)
		}
		if strings.Contains(out, value) {
			t.Fatalf("the agent's output holds the secret value:\n%s", out)
		}
		_ = filepath.WalkDir(state, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			if b, _ := os.ReadFile(p); strings.Contains(string(b), value) {
				t.Fatalf("the state file %s holds the secret value", p)
			}
			return nil
		})
	}
	assertNowhere(value, string(status), d.output())

	// A file for another identity: exit 2 naming it, nothing touched, the service keeps its secret.
	other, _ := age.GenerateX25519Identity()
	writeRelease(t, rel, name, strings.Repeat("d", 40), image, compose, map[string][]byte{"db.sops.yaml": encrypted(other)})
	before := snapshot(t, dc, name)
	r := runAgent(t, dc, "run", "--once", "--config", cfg, "--state-dir", state, "--listen", "")
	if r.code != 2 || !strings.Contains(r.stderr, "stacks/"+name+"/db.sops.yaml") {
		t.Fatalf("a file the agent cannot decrypt: exit %d, want 2 naming the file\n%s", r.code, r.stderr)
	}
	if after := snapshot(t, dc, name); after != before {
		t.Fatal("a release the agent could not decrypt changed the swarm")
	}
	if got := get(t, web+"/secret/db_password"); got != sha(value) {
		t.Fatalf("the running service's secret changed: %s", got)
	}
	assertNowhere(value, "", r.stdout+r.stderr)
}

// output is what the daemon wrote so far (stdout and stderr).
func (d *agentDaemon) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// halt stops the daemon and waits until it returned (the test's cleanup waits again).
func (d *agentDaemon) halt() {
	d.stop()
	code := <-d.done
	d.done <- code
}
