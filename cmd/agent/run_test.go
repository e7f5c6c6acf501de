package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// release returns the artifact files of a release of one stack whose web service runs image (pinned).
func release(stackName, commit, image string, port int, extra string) map[string]string {
	compose := fmt.Sprintf(`services:
  web:
    image: %s
    environment:
      MESSAGE: shop
    secrets: [db_password]
    ports:
      - {target: 8080, published: %d, mode: host}
    deploy:
      endpoint_mode: dnsrr
%s
secrets:
  db_password:
    environment: DB_PASSWORD
`, image, port, extra)
	digest := image[strings.LastIndex(image, "@")+1:]
	m := map[string]any{
		"schema_version": 1, "project": "sawmill/platform", "commit": commit, "ref": "main",
		"pipeline": map[string]any{"id": 1, "url": ""}, "registry": "", "channel": "release-main",
		"images": map[string]any{"web": map[string]any{"repository": image[:strings.LastIndex(image, ":")], "tag": "v1", "digest": digest, "rebuilt": true, "ref": image}},
		"stacks": map[string]any{stackName: map[string]any{"files": []string{"stacks/" + stackName + "/compose.yaml"}}},
	}
	b, _ := json.Marshal(m)
	return map[string]string{"release/release.json": string(b), "release/stacks/" + stackName + "/compose.yaml": compose}
}

type daemonEnv struct {
	t   *testing.T
	dc  *client.Client
	gl  *testenv.GitLab
	url string
	// An image of the test registry (pinned), the host port the stack publishes, its name.
	reg, image, name string
	port             int
}

// newDaemonEnv starts what the daemon tests share: the swarm, a registry with web:v1, a GitLab test server
// with the given variables, a stack name removed at the end, and the agent's SAWMILL_* settings.
func newDaemonEnv(t *testing.T, vars ...testenv.Variable) daemonEnv {
	t.Helper()
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	_, d1 := testenv.Image(t, reg+"/web:v1", "MESSAGE=v1")
	name := randomName("shop")
	t.Cleanup(func() { removeStack(dc, name) })
	t.Cleanup(func() { removeLease(dc, "sawmill-test-lease-"+name) })
	gl := testenv.NewGitLab("glpat-agent", "sawmill/platform")
	gl.SetVariables(vars...)
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	e := daemonEnv{t: t, dc: dc, gl: gl, url: srv.URL, reg: reg, image: reg + "/web:v1@" + d1, name: name, port: testenv.FreePort(t)}
	e.setenv()
	return e
}

// removeLease removes the test's lease and the configs beside it (<lease>.pin-, .history-, .request-, .answer-).
func removeLease(dc *client.Client, lease string) {
	l, _ := dc.ConfigList(context.Background(), client.ConfigListOptions{Filters: make(client.Filters).Add("name", lease)})
	for _, c := range l.Items {
		if c.Spec.Name == lease || strings.HasPrefix(c.Spec.Name, lease+".") {
			_, _ = dc.ConfigRemove(context.Background(), c.ID, client.ConfigRemoveOptions{})
		}
	}
}

func (e daemonEnv) setenv() {
	e.t.Setenv("SAWMILL_GITLAB_URL", e.url)
	e.t.Setenv("SAWMILL_GITLAB_PROJECT", "sawmill/platform")
	e.t.Setenv("SAWMILL_GITLAB_TOKEN", "glpat-agent")
	e.t.Setenv("SAWMILL_GITLAB_VARIABLES", "true")
	e.t.Setenv("SAWMILL_WEBHOOK_TOKEN", "hook-secret")
	// A lease of the test's own: other agents on the test swarm (other tests, other packages) do not count.
	e.t.Setenv("SAWMILL_LEASE_NAME", "sawmill-test-lease-"+e.name)
}

func TestDaemonFollowsGitLab(t *testing.T) {
	env := newDaemonEnv(t,
		testenv.Variable{Key: "DB_PASSWORD", Value: "pw-staging", Scope: "staging"},
		testenv.Variable{Key: "DB_PASSWORD", Value: "pw-production", Scope: "production"},
	)
	dc, reg, image, port, name, gl := env.dc, env.reg, env.image, env.port, env.name, env.gl
	state := t.TempDir()
	web := fmt.Sprintf("http://127.0.0.1:%d", port)
	commit := strings.Repeat("a", 40)
	base := time.Now()

	once := func(environment string, extra ...string) agentRun {
		args := append([]string{"run", "--once", "--environment", environment, "--state-dir", state, "--listen", "", "--policy-mode", "warn", "--timeout", "2m"}, extra...)
		return runAgent(t, dc, args...)
	}

	// A promotion to staging: the agent of staging deploys the release, with staging's secret.
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: base}, release(name, commit, image, port, ""))
	r := once("staging")
	if r.code != 0 {
		t.Fatalf("staging: exit %d", r.code)
	}
	// --once prints what apply prints: the plan it applied.
	if !regexp.MustCompile(`service\s+` + name + `_web\s+created`).MatchString(r.stdout) {
		t.Errorf("run --once did not print the plan it applied:\n%s", r.stdout)
	}
	svc, err := dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.Service.Spec.TaskTemplate.ContainerSpec.Image; got != image {
		t.Fatalf("staging runs %s, want the released %s", got, image)
	}
	if got := get(t, web+"/secret/db_password"); got != sha("pw-staging") {
		t.Fatal("the staging-scoped GitLab variable did not reach the secret")
	}
	assertStatus(t, gl, commit, "sawmill/staging", "success")

	// The same release promoted to production. The environments are separate swarms; on this one test swarm
	// the production agent first meets staging's objects, which it must not take over (the environment is
	// part of the owner label): a conflict, nothing touched.
	gl.AddDeployment(testenv.Deployment{ID: 2, Job: 12, Pipeline: 1, Environment: "production", Status: "success", SHA: commit, Finished: base.Add(time.Minute)}, release(name, commit, image, port, ""))
	stagingSnap := snapshot(t, dc, name)
	if r := once("production"); r.code != 2 || !strings.Contains(r.stderr, "refusing to modify or adopt") {
		t.Fatalf("production over staging's objects: exit %d, want 2 (a conflict)", r.code)
	}
	if snapshot(t, dc, name) != stagingSnap {
		t.Fatal("the production agent changed staging's objects")
	}
	// Production's own swarm: the same digest, production's secret.
	removeStack(dc, name)
	waitFor(t, "staging's objects to go", time.Minute, func() bool { removeStack(dc, name); return snapshot(t, dc, name) == "" })
	if r := once("production"); r.code != 0 {
		t.Fatalf("production: exit %d", r.code)
	}
	svc, _ = dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
	if got := svc.Service.Spec.TaskTemplate.ContainerSpec.Image; got != image {
		t.Fatalf("production runs %s, want the same digest %s", got, image)
	}
	if got := get(t, web+"/secret/db_password"); got != sha("pw-production") {
		t.Fatal("the production-scoped variable did not reach the secret")
	}
	assertStatus(t, gl, commit, "sawmill/production", "success")
	for _, s := range gl.Statuses() {
		if strings.Contains(s.Description, "pw-") {
			t.Fatal("a secret value reached GitLab")
		}
	}

	// A restart does not redeploy: every object of the stack keeps its version.
	snap := snapshot(t, dc, name)
	if r := once("production"); r.code != 0 {
		t.Fatalf("restart: exit %d", r.code)
	}
	if snapshot(t, dc, name) != snap {
		t.Fatal("a restart with the same release wrote to the stack")
	}

	// A release the policies deny is refused and reported failed; the swarm is untouched.
	bad := strings.Repeat("b", 40)
	gl.AddDeployment(testenv.Deployment{ID: 3, Job: 13, Pipeline: 2, Environment: "production", Status: "success", SHA: bad, Finished: base.Add(2 * time.Minute)},
		release(name, bad, image, port, "    privileged: true\n    network_mode: host\n"))
	r = runAgent(t, dc, "run", "--once", "--environment", "production", "--state-dir", state, "--listen", "", "--policy-mode", "enforce")
	if r.code != 3 {
		t.Fatalf("denied release: exit %d, want 3", r.code)
	}
	assertStatus(t, gl, bad, "sawmill/production", "failed")
	if snapshot(t, dc, name) != snap {
		t.Fatal("a refused release changed the swarm")
	}

	// A release with an unsigned image is refused and reported failed, with signatures checked against the
	// trust policy of the agent's config file; the swarm is untouched.
	key := testenv.NewKey(t)
	_, unsigned := testenv.Image(t, reg+"/web:v2", "MESSAGE=v2")
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	pem := strings.ReplaceAll(strings.TrimSpace(key.PublicPEM), "\n", "\n            ")
	writeFile(t, cfg, fmt.Sprintf("trust:\n  rules:\n    - pattern: %q\n      mode: enforce\n      authorities:\n        - key: |\n            %s\n", reg+"/**", pem))
	unsignedCommit := strings.Repeat("e", 40)
	gl.AddDeployment(testenv.Deployment{ID: 4, Job: 14, Pipeline: 3, Environment: "production", Status: "success", SHA: unsignedCommit, Finished: base.Add(3 * time.Minute)},
		release(name, unsignedCommit, reg+"/web:v2@"+unsigned, port, ""))
	r = runAgent(t, dc, "run", "--once", "--config", cfg, "--skip-verify=false", "--environment", "production", "--state-dir", state, "--listen", "", "--policy-mode", "warn")
	if r.code != 3 {
		t.Fatalf("unsigned release: exit %d, want 3", r.code)
	}
	assertStatus(t, gl, unsignedCommit, "sawmill/production", "failed")
	if snapshot(t, dc, name) != snap {
		t.Fatal("an unsigned release changed the swarm")
	}

	// A GitLab outage leaves the running stack as it was.
	gl.Outage.Store(true)
	r = once("production")
	gl.Outage.Store(false)
	if r.code == 0 {
		t.Fatal("an outage was reported as success")
	}
	if snapshot(t, dc, name) != snap {
		t.Fatal("a GitLab outage changed the swarm")
	}
	if got := get(t, web+"/"); got != "shop" {
		t.Fatalf("after the outage web answers %q", got)
	}
}

func assertStatus(t *testing.T, gl *testenv.GitLab, sha, name, state string) {
	t.Helper()
	var last *testenv.Status
	for _, s := range gl.Statuses() {
		if s.SHA == sha && s.Name == name {
			last = &s
		}
	}
	if last == nil || last.State != state {
		t.Fatalf("commit status %s of %s: %+v, want %s (all: %+v)", name, sha[:7], last, state, gl.Statuses())
	}
}

// agentDaemon runs `agent run` until stop is called.
type agentDaemon struct {
	stop func()
	done chan int
	out  *bytes.Buffer
	addr string
	mu   *sync.Mutex // guards out
}

func startDaemon(t *testing.T, dc *client.Client, args ...string) *agentDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	d := &agentDaemon{stop: cancel, done: make(chan int, 1), out: &bytes.Buffer{}, addr: addr, mu: &sync.Mutex{}}
	w := writerFunc(func(p []byte) (int, error) { d.mu.Lock(); defer d.mu.Unlock(); return d.out.Write(p) })
	go func() {
		d.done <- run(ctx, skipVerifyUnlessTrusted(append([]string{"run", "--listen", addr}, args...)), deps{stdout: w, stderr: w, connect: func() (swarm.Client, error) { return nopClose{dc}, nil }})
	}()
	t.Cleanup(func() { cancel(); <-d.done })
	return d
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (d *agentDaemon) status(t *testing.T) map[string]any {
	t.Helper()
	r, err := http.Get("http://" + d.addr + "/status")
	if err != nil {
		return nil
	}
	defer r.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(r.Body).Decode(&m)
	return m
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestDaemonWebhookAndOneActingAgent(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw", Scope: "*"})
	dc, image, port, name, gl := env.dc, env.image, env.port, env.name, env.gl
	commit := strings.Repeat("c", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, image, port, ""))

	// Two agents on the same swarm, a lease of a few seconds: one acts, the other stands by.
	lease := t.TempDir() + "/lease.yaml"
	writeFile(t, lease, "lease:\n  ttl: 4s\n")
	args := func() []string {
		return []string{"--config", lease, "--environment", "staging", "--state-dir", t.TempDir(), "--interval", "1s", "--policy-mode", "warn", "--timeout", "2m"}
	}
	a := startDaemon(t, dc, args()...)
	b := startDaemon(t, dc, args()...)
	outcome := func(d *agentDaemon) string { s := d.status(t); o, _ := s["outcome"].(string); return o }
	waitFor(t, "one agent to deploy", 2*time.Minute, func() bool { return outcome(a) == "success" || outcome(b) == "success" })
	time.Sleep(2 * time.Second)
	leader, standby := a, b
	if outcome(b) == "success" {
		leader, standby = b, a
	}
	if o := outcome(standby); o != "standby" {
		t.Fatalf("the other agent: %q, want standby: %v", o, standby.status(t))
	}

	// The webhook: a wrong token is refused, the right one triggers a cycle at once.
	post := func(d *agentDaemon, token string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+d.addr+"/hooks/gitlab", strings.NewReader(`{"object_kind":"deployment","status":"success"}`))
		req.Header.Set("X-Gitlab-Token", token)
		req.Header.Set("X-Gitlab-Event", "Deployment Hook")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(leader, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong webhook token: %d, want 401", code)
	}
	if code := post(leader, "hook-secret"); code != http.StatusAccepted {
		t.Fatalf("webhook: %d, want 202", code)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + leader.addr + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, resp, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path == "/metrics" && (!bytes.Contains(b, []byte("sawmill_sync_duration_seconds")) || !bytes.Contains(b, []byte("sawmill_leader 1"))) {
			t.Fatalf("metrics lack the sync duration or the leader gauge:\n%s", b)
		}
	}

	// The acting agent goes away: the other takes over.
	leader.stop()
	<-leader.done
	leader.done <- 0 // for the cleanup
	waitFor(t, "the standby agent to take over", time.Minute, func() bool { return outcome(standby) == "success" })
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Killing the agent in the middle of a rollout and starting it again converges, with no duplicate secret
// and none that nothing references.
func TestDaemonKilledMidRolloutResumes(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-one", Scope: "*"})
	dc, image, port, name, gl := env.dc, env.image, env.port, env.name, env.gl
	state := t.TempDir()
	commit := strings.Repeat("d", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, image, port, ""))
	args := []string{"--environment", "staging", "--state-dir", state, "--policy-mode", "off", "--timeout", "2m"}
	if r := runAgent(t, dc, append([]string{"run", "--once", "--listen", ""}, args...)...); r.code != 0 {
		t.Fatalf("first rollout: exit %d", r.code)
	}

	// The secret changes; the agent is killed as soon as the new secret object exists.
	gl.SetVariables(testenv.Variable{Key: "DB_PASSWORD", Value: "pw-two", Scope: "*"})
	secrets := func() []string {
		l, _ := dc.SecretList(context.Background(), client.SecretListOptions{Filters: make(client.Filters).Add("label", "com.docker.stack.namespace="+name)})
		var names []string
		for _, s := range l.Items {
			names = append(names, s.Spec.Name)
		}
		return names
	}
	d := startDaemon(t, dc, append([]string{"--interval", "1h"}, args...)...)
	waitFor(t, "the new secret", time.Minute, func() bool { return len(secrets()) == 2 })
	d.stop()
	<-d.done
	d.done <- 0

	// Started again, it finishes the rollout.
	if r := runAgent(t, dc, append([]string{"run", "--once", "--listen", ""}, args...)...); r.code != 0 {
		t.Fatalf("after the restart: exit %d", r.code)
	}
	if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/secret/db_password", port)); got != sha("pw-two") {
		t.Fatal("the restarted agent did not finish the rotation")
	}
	assertSecretsClean(t, dc, name)
}

type swarmSpec struct{ secrets []string }

func specOf(s any) *swarmSpec {
	b, _ := json.Marshal(s)
	var spec struct {
		TaskTemplate struct {
			ContainerSpec struct {
				Secrets []struct{ SecretName string }
			}
		}
	}
	if string(b) == "null" || json.Unmarshal(b, &spec) != nil {
		return nil
	}
	out := &swarmSpec{}
	for _, s := range spec.TaskTemplate.ContainerSpec.Secrets {
		out.secrets = append(out.secrets, s.SecretName)
	}
	return out
}
