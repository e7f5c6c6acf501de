package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// The fault suite (docs/reliability.md). Each case injects a fault into a real component (the GitLab API
// stand-in, the registry, the agent process itself), repeats it FAULT_REPEAT times (default 1: the short form
// that `make test` runs; `make faults` runs more), and asserts that nothing is lost or duplicated, that what
// runs is the signed release, and that GitLab is told the truth. Each case logs one line
// `FAULT|case|repetitions|outcome|recovery` that `make faults` collects into the table.

func repeats() int {
	if n, err := strconv.Atoi(os.Getenv("FAULT_REPEAT")); err == nil && n > 0 {
		return n
	}
	return 1
}

func faultRow(t *testing.T, name string, reps int, outcome string, recovery []time.Duration) {
	t.Helper()
	slices.Sort(recovery)
	rec := "-"
	if len(recovery) > 0 {
		rec = fmt.Sprintf("median %s, max %s", recovery[len(recovery)/2].Round(100*time.Millisecond), recovery[len(recovery)-1].Round(100*time.Millisecond))
	}
	t.Logf("FAULT|%s|%d|%s|%s", name, reps, outcome, rec)
	if f := os.Getenv("FAULT_TABLE"); f != "" {
		if fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(fh, "| %s | %d | %s | %s |\n", name, reps, outcome, rec)
			fh.Close()
		}
	}
}

// GitLab that hangs, answers 500 or 429, or answers slowly: the cycle ends within its deadlines, the outcome
// is an error (not a failure), nothing on the swarm changes, nothing false is reported, and the agent
// recovers on the first cycle after GitLab does.
func TestFaultGitLab(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-faults", Scope: "*"})
	dc, gl, name := env.dc, env.gl, env.name
	state := t.TempDir()
	commit := strings.Repeat("1", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, env.image, env.port, ""))
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "gitlab: {timeout: 2s}\n")
	once := func() agentRun {
		return runAgent(t, dc, "run", "--once", "--config", cfg, "--environment", "staging", "--state-dir", state, "--listen", "", "--policy-mode", "off", "--timeout", "2m")
	}
	if r := once(); r.code != 0 {
		t.Fatalf("first rollout: exit %d", r.code)
	}
	snap := snapshot(t, dc, name)
	stateBefore, _ := os.ReadFile(filepath.Join(state, "state.json"))
	for _, fault := range []struct {
		name       string
		set, unset func()
		wantExit   int
	}{
		{"GitLab hangs (no answer)", func() { gl.Hang.Store(true) }, func() { gl.Hang.Store(false) }, 1},
		{"GitLab answers 500", func() { gl.Outage.Store(true) }, func() { gl.Outage.Store(false) }, 1},
		{"GitLab answers 429", func() { gl.Limited.Store(true) }, func() { gl.Limited.Store(false) }, 1},
		{"GitLab answers slowly (1.5s a request)", func() { gl.Slow.Store(1500) }, func() { gl.Slow.Store(0) }, 0},
	} {
		t.Run(fault.name, func(t *testing.T) {
			var recovery []time.Duration
			for range repeats() {
				statuses := len(gl.Statuses())
				fault.set()
				start := time.Now()
				r := once()
				took := time.Since(start)
				fault.unset()
				if r.code != fault.wantExit {
					t.Fatalf("exit %d, want %d\n%s", r.code, fault.wantExit, r.stderr)
				}
				if took > 45*time.Second {
					t.Fatalf("the cycle took %s: a deadline is missing", took)
				}
				if snapshot(t, dc, name) != snap {
					t.Fatal("the fault changed the swarm")
				}
				if len(gl.Statuses()) != statuses {
					t.Fatalf("GitLab was told something during the fault: %+v", gl.Statuses()[statuses:])
				}
				if after, _ := os.ReadFile(filepath.Join(state, "state.json")); string(after) != string(stateBefore) {
					t.Fatalf("the fault changed the recorded state:\n%s\nwas\n%s", after, stateBefore)
				}
				// Recovery: the first cycle after the fault is a success, with nothing to change.
				start = time.Now()
				if r := once(); r.code != 0 || !strings.Contains(r.stdout, "unchanged") {
					t.Fatalf("after the fault: exit %d\n%s", r.code, r.stdout)
				}
				recovery = append(recovery, took+time.Since(start))
			}
			outcome := "error (retried with backoff), swarm, state and GitLab unchanged; next cycle success"
			if fault.wantExit == 0 {
				outcome = "success, within the deadlines"
			}
			faultRow(t, fault.name, repeats(), outcome, recovery)
		})
	}
}

// A registry that stalls mid-blob: verification times out, which is transient (not a refusal): the running
// release stays, its reported state stays, and the next cycle verifies again.
func TestFaultRegistryStalls(t *testing.T) {
	dc := testenv.Docker(t)
	reg, stall := testenv.StallingRegistry(t)
	_, digest := testenv.Image(t, reg+"/web:v1", "MESSAGE=v1")
	key := testenv.NewKey(t)
	image := reg + "/web:v1@" + digest
	key.Sign(t, reg+"/web@"+digest)
	name := randomName("stall")
	t.Cleanup(func() { removeStack(dc, name) })
	gl := testenv.NewGitLab("glpat-agent", "sawmill/platform")
	gl.SetVariables(testenv.Variable{Key: "DB_PASSWORD", Value: "pw-stall", Scope: "*"})
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	t.Setenv("SAWMILL_GITLAB_URL", srv.URL)
	t.Setenv("SAWMILL_GITLAB_PROJECT", "sawmill/platform")
	t.Setenv("SAWMILL_GITLAB_TOKEN", "glpat-agent")
	t.Setenv("SAWMILL_GITLAB_VARIABLES", "true")
	t.Setenv("SAWMILL_LEASE_NAME", "sawmill-test-lease-"+name)
	commit := strings.Repeat("2", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, image, testenv.FreePort(t), ""))
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	pem := strings.ReplaceAll(strings.TrimSpace(key.PublicPEM), "\n", "\n            ")
	writeFile(t, cfg, fmt.Sprintf("registry_timeout: 3s\ntrust:\n  rules:\n    - pattern: %q\n      authorities:\n        - key: |\n            %s\n", reg+"/**", pem))
	state := t.TempDir()
	once := func() agentRun {
		// A fresh process each time: no verification cache.
		return runAgent(t, dc, "run", "--once", "--config", cfg, "--skip-verify=false", "--environment", "staging", "--state-dir", state, "--listen", "", "--policy-mode", "off", "--timeout", "2m")
	}
	if r := once(); r.code != 0 {
		t.Fatalf("first rollout: exit %d\n%s", r.code, r.stderr)
	}
	snap := snapshot(t, dc, name)
	var recovery []time.Duration
	for range repeats() {
		stall.Store(true)
		start := time.Now()
		r := once()
		stall.Store(false)
		if r.code != 1 || !strings.Contains(r.stderr, "outcome=error") {
			t.Fatalf("a stalled registry: exit %d, want 1 with outcome error (transient, not refused)\n%s", r.code, r.stderr)
		}
		if snapshot(t, dc, name) != snap {
			t.Fatal("a stalled registry changed the swarm")
		}
		if st := gl.Statuses(); len(st) != 1 || st[0].State != "success" {
			t.Fatalf("GitLab was told %+v, want only the first success", st)
		}
		if r := once(); r.code != 0 {
			t.Fatalf("after the stall: exit %d", r.code)
		}
		recovery = append(recovery, time.Since(start))
	}
	faultRow(t, "registry stalls mid-blob", repeats(), "error (transient, not refused); swarm and GitLab unchanged; next cycle verifies and succeeds", recovery)
}

// builds holds, by package, the build of a binary the tests run as a process: one per test process.
var builds sync.Map // package path -> func() (string, error)

// buildOnce builds the Go package pkg (a path relative to cmd/agent) into a binary named name, once per test
// process, and returns its path.
func buildOnce(t *testing.T, pkg, name string) string {
	t.Helper()
	build, _ := builds.LoadOrStore(pkg, sync.OnceValues(func() (string, error) {
		dir, err := os.MkdirTemp("", "sawmill-bin")
		if err != nil {
			return "", err
		}
		bin := filepath.Join(dir, name)
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
		return bin, nil
	}))
	bin, err := build.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// agentBinary builds the agent once per test process, for the faults that need a real process to kill.
func agentBinary(t *testing.T) string { return buildOnce(t, ".", "agent") }

// agentProcess is the agent running as its own process.
type agentProcess struct {
	cmd  *exec.Cmd
	addr string
	out  *strings.Builder
	mu   *sync.Mutex
}

func startAgentProcess(t *testing.T, env []string, args ...string) *agentProcess {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(agentBinary(t), append([]string{"run", "--listen", addr, "--skip-verify"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	p := &agentProcess{cmd: cmd, addr: addr, out: &strings.Builder{}, mu: &sync.Mutex{}}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		s := bufio.NewScanner(pr)
		for s.Scan() {
			p.mu.Lock()
			p.out.WriteString(s.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		pw.Close()
		if t.Failed() {
			p.mu.Lock()
			t.Logf("agent %s (pid %d):\n%s", strings.Join(args, " "), cmd.Process.Pid, p.out.String())
			p.mu.Unlock()
		}
	})
	return p
}

// metrics reads the agent's /metrics: each unlabelled sample by name.
func (p *agentProcess) metrics() map[string]float64 {
	c := http.Client{Timeout: time.Second}
	r, err := c.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return nil
	}
	defer r.Body.Close()
	m := map[string]float64{}
	s := bufio.NewScanner(r.Body)
	for s.Scan() {
		name, value, ok := strings.Cut(s.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			m[name] = v
		}
	}
	return m
}

func (p *agentProcess) status() map[string]any {
	c := http.Client{Timeout: time.Second}
	r, err := c.Get("http://" + p.addr + "/status")
	if err != nil {
		return nil
	}
	defer r.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(r.Body).Decode(&m)
	return m
}

func (p *agentProcess) leader() bool {
	c := http.Client{Timeout: time.Second}
	r, err := c.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return false
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return strings.Contains(string(b), "\nsawmill_leader 1")
}

// The agent killed (SIGKILL) at random points of a rollout (a secret rotation), then started again: the
// rollout finishes, with no duplicate secret and none that nothing references, and GitLab is told success
// once per release.
func TestFaultAgentKilledMidRollout(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-0", Scope: "*"})
	dc, gl, name := env.dc, env.gl, env.name
	state := t.TempDir()
	commit := strings.Repeat("3", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, env.image, env.port, ""))
	envVars := []string{"DOCKER_HOST=" + os.Getenv("SAWMILL_TEST_DOCKER_HOST")}
	args := []string{"--environment", "staging", "--state-dir", state, "--policy-mode", "off", "--timeout", "2m", "--interval", "1h"}
	if r := runAgent(t, dc, append([]string{"run", "--once", "--listen", ""}, args...)...); r.code != 0 {
		t.Fatalf("first rollout: exit %d", r.code)
	}
	points := 4 * repeats() // 20 with make faults
	var recovery []time.Duration
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 1; i <= points; i++ {
		value := fmt.Sprintf("pw-%d", i)
		gl.SetVariables(testenv.Variable{Key: "DB_PASSWORD", Value: value, Scope: "*"})
		p := startAgentProcess(t, envVars, args...)
		time.Sleep(time.Duration(200+rng.IntN(3000)) * time.Millisecond) // a random point of the rollout
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
		start := time.Now()
		r := runAgent(t, dc, append([]string{"run", "--once", "--listen", ""}, args...)...)
		if r.code != 0 {
			t.Fatalf("kill %d: the restarted agent: exit %d\n%s", i, r.code, r.stderr)
		}
		recovery = append(recovery, time.Since(start))
		if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/secret/db_password", env.port)); got != sha(value) {
			t.Fatalf("kill %d: the service does not run the rotated secret", i)
		}
		assertSecretsClean(t, dc, name)
	}
	if n := len(gl.Statuses()); n > 1+points {
		t.Fatalf("%d statuses for %d rollouts: duplicates", n, 1+points)
	}
	faultRow(t, "agent SIGKILLed at a random point of a rollout, restarted", points, "rollout finished; no duplicate or orphaned secret; one status per release", recovery)
}

// assertSecretsClean: every secret of the stack is used by the service's spec or its previous spec, once.
func assertSecretsClean(t *testing.T, dc *client.Client, name string) {
	t.Helper()
	svc, err := dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, spec := range []*swarmSpec{specOf(svc.Service.Spec), specOf(svc.Service.PreviousSpec)} {
		if spec != nil {
			for _, s := range spec.secrets {
				used[s] = true
			}
		}
	}
	l, _ := dc.SecretList(context.Background(), client.SecretListOptions{Filters: make(client.Filters).Add("label", "com.docker.stack.namespace="+name)})
	seen := map[string]bool{}
	for _, s := range l.Items {
		if seen[s.Spec.Name] {
			t.Fatalf("duplicate secret %s", s.Spec.Name)
		}
		seen[s.Spec.Name] = true
		if !used[s.Spec.Name] {
			t.Fatalf("orphaned secret %s", s.Spec.Name)
		}
	}
}

// Two and three agents on one swarm; the leader is killed (SIGKILL) or frozen (SIGSTOP). A standby takes over
// within the lease's TTL plus a cycle; a frozen leader that wakes up stands by (it cannot renew: another holds
// the lease) and does not act; at no time do two agents say they lead.
func TestFaultLeaderKilledOrFrozen(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-lead", Scope: "*"})
	gl, name := env.gl, env.name
	commit := strings.Repeat("4", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, env.image, env.port, ""))
	leaseName := "sawmill-test-lease-" + name
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, fmt.Sprintf("lease: {ttl: 6s, name: %s}\n", leaseName))
	envVars := []string{"DOCKER_HOST=" + os.Getenv("SAWMILL_TEST_DOCKER_HOST")} // and the SAWMILL_* settings of newDaemonEnv
	start := func() *agentProcess {
		return startAgentProcess(t, envVars, "--config", cfg, "--environment", "staging", "--state-dir", t.TempDir(), "--policy-mode", "off", "--timeout", "2m", "--interval", "2s")
	}
	leaders := func(agents []*agentProcess) []*agentProcess {
		var l []*agentProcess
		for _, a := range agents {
			if a.leader() {
				l = append(l, a)
			}
		}
		return l
	}
	for _, n := range []int{2, 3} {
		for _, mode := range []string{"killed (SIGKILL)", "frozen (SIGSTOP)"} {
			t.Run(fmt.Sprintf("%d agents, %s", n, mode), func(t *testing.T) {
				var takeover []time.Duration
				for range repeats() {
					agents := make([]*agentProcess, n)
					for i := range agents {
						agents[i] = start()
					}
					var l []*agentProcess
					waitFor(t, "one leader", 2*time.Minute, func() bool { l = leaders(agents); return len(l) == 1 })
					leader := l[0]
					waitFor(t, "the release deployed", 2*time.Minute, func() bool { s := leader.status(); return s != nil && s["outcome"] == "success" })
					var standbys []*agentProcess
					for _, a := range agents {
						if a != leader {
							standbys = append(standbys, a)
						}
					}
					at := time.Now()
					if strings.HasPrefix(mode, "killed") {
						_ = leader.cmd.Process.Signal(syscall.SIGKILL)
					} else {
						_ = leader.cmd.Process.Signal(syscall.SIGSTOP)
					}
					waitFor(t, "a standby to take over", time.Minute, func() bool {
						l = leaders(standbys)
						if len(l) > 1 {
							t.Fatalf("%d standbys say they lead", len(l))
						}
						return len(l) == 1
					})
					took := time.Since(at)
					takeover = append(takeover, took)
					if took > 6*time.Second+2*time.Second+5*time.Second { // TTL + a cycle + the poll
						t.Fatalf("takeover took %s, more than the TTL (6s) plus a cycle", took)
					}
					if strings.HasPrefix(mode, "frozen") {
						_ = leader.cmd.Process.Signal(syscall.SIGCONT)
						waitFor(t, "the woken leader to stand by", 30*time.Second, func() bool {
							s := leader.status()
							return s != nil && s["outcome"] == "standby"
						})
						if got := leaders(agents); len(got) != 1 || got[0] == leader {
							t.Fatalf("after the old leader woke, %d agents say they lead (the old one among them: %v)", len(got), slices.Contains(got, leader))
						}
					}
					for _, a := range agents {
						_ = a.cmd.Process.Kill()
						_ = a.cmd.Wait()
					}
				}
				faultRow(t, fmt.Sprintf("%d agents, the leader %s", n, mode), repeats(), "a standby took over; never two leaders", takeover)
			})
		}
	}
}

// A soak of no-op cycles of the agent as its own process (200, 1,000 with make faults): its goroutines, open
// files and resident memory, read from its own /metrics, stay flat.
func TestFaultSoakNoOpCycles(t *testing.T) {
	cycles := 200 * repeats()
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-soak", Scope: "*"})
	gl, name := env.gl, env.name
	commit := strings.Repeat("5", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()}, release(name, commit, env.image, env.port, ""))
	p := startAgentProcess(t, []string{"DOCKER_HOST=" + os.Getenv("SAWMILL_TEST_DOCKER_HOST")},
		"--environment", "staging", "--state-dir", t.TempDir(), "--policy-mode", "off", "--timeout", "2m", "--interval", "20ms")
	count := func() int { return int(p.metrics()["sawmill_sync_duration_seconds_count"]) }
	// The least of five samples 100 ms apart: a cycle in flight has a few goroutines and connections of its own.
	sample := func() (goroutines, files int, rssMB float64) {
		goroutines, files, rssMB = 1<<30, 1<<30, 1<<30
		for range 5 {
			m := p.metrics()
			goroutines, files = min(goroutines, int(m["go_goroutines"])), min(files, int(m["process_open_fds"]))
			rssMB = min(rssMB, m["process_resident_memory_bytes"]/(1<<20))
			time.Sleep(100 * time.Millisecond)
		}
		return goroutines, files, rssMB
	}
	start := time.Now()
	waitFor(t, "100 cycles", 2*time.Minute, func() bool { return count() >= 100 })
	g0, f0, r0 := sample()
	waitFor(t, fmt.Sprintf("%d cycles", cycles), 20*time.Minute, func() bool { return count() >= cycles })
	g1, f1, r1 := sample()
	took := time.Since(start)
	if s := p.status(); s == nil || s["outcome"] != "success" {
		t.Fatalf("the last cycle: %v, want success", s)
	}
	t.Logf("after 100 cycles: %d goroutines, %d open files, %.1f MB RSS; after %d: %d, %d, %.1f MB (%s, %s a cycle)",
		g0, f0, r0, cycles, g1, f1, r1, took.Round(time.Second), (took / time.Duration(cycles)).Round(time.Millisecond))
	if g0 == 0 || g1 > g0+5 || f1 > f0+5 || r1 > r0+20 {
		t.Fatalf("resources grow over no-op cycles: goroutines %d -> %d, files %d -> %d, RSS %.1f -> %.1f MB", g0, g1, f0, f1, r0, r1)
	}
	faultRow(t, fmt.Sprintf("soak: %d no-op cycles (20 ms interval)", cycles), 1,
		fmt.Sprintf("flat: goroutines %d -> %d, open files %d -> %d, RSS %.1f -> %.1f MB after 100 and %d cycles (the agent process)", g0, g1, f0, f1, r0, r1, cycles), nil)
	_ = name
}
