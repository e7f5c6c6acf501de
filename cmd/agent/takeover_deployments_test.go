package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// TestDaemonTakeoverRecordsNoDuplicate: two agents, each a process with a state directory of its own, share
// the lease on the test swarm. When the leader is killed and the standby takes over, the standby's state knows
// no release, yet GitLab's environment already shows the running release from the agent: the environment's
// page gets no second deployment record of it (no write to the Deployments API at all). A new release after
// the takeover is still recorded running, then success.
func TestDaemonTakeoverRecordsNoDuplicate(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-takeover", Scope: "*"})
	gl, name := env.gl, env.name
	// writes logs the agents' writes to the Deployments API: "POST <sha[:1]>=<status>", "PUT <status>";
	// recordReads counts the reads of the environment's records (every status; the source's reads of
	// successful deployments, every cycle, ask for status=success).
	var mu sync.Mutex
	var writes []string
	recordReads := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/deployments") && r.URL.Query().Get("status") == "" {
			mu.Lock()
			recordReads++
			mu.Unlock()
		}
		if r.Method != http.MethodGet && strings.Contains(r.URL.Path, "/deployments") {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var d struct{ SHA, Status string }
			_ = json.Unmarshal(body, &d)
			mu.Lock()
			if r.Method == http.MethodPost {
				writes = append(writes, "POST "+d.SHA[:min(1, len(d.SHA))]+"="+d.Status)
			} else {
				writes = append(writes, "PUT "+d.Status)
			}
			mu.Unlock()
		}
		gl.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	reads := func() int {
		mu.Lock()
		defer mu.Unlock()
		return recordReads
	}
	logged := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(writes, ", ")
	}
	records := func() string {
		var out []string
		for _, d := range gl.Deployments("staging") {
			if d.Job == 0 {
				out = append(out, d.SHA[:1]+"="+d.Status)
			}
		}
		return strings.Join(out, " ")
	}
	commit := func(c string) string { return strings.Repeat(c, 40) }
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit("a"), Finished: time.Now()},
		release(name, commit("a"), env.image, env.port, "    labels:\n      release: a\n"))
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, fmt.Sprintf("lease: {ttl: 6s, name: sawmill-test-lease-%s}\n", name))
	vars := []string{"DOCKER_HOST=" + os.Getenv("SAWMILL_TEST_DOCKER_HOST"), "SAWMILL_GITLAB_URL=" + srv.URL}
	start := func() *agentProcess {
		return startAgentProcess(t, vars, "--config", cfg, "--environment", "staging", "--state-dir", t.TempDir(), "--policy-mode", "off", "--timeout", "2m", "--interval", "2s")
	}
	deployed := func(a *agentProcess, c string) func() bool {
		return func() bool {
			s := a.status()
			return s != nil && s["outcome"] == "success" && s["commit"] == commit(c)
		}
	}

	first := start()
	waitFor(t, "the first agent to lead", 2*time.Minute, first.leader)
	waitFor(t, "release a deployed", 2*time.Minute, deployed(first, "a"))
	waitFor(t, "release a recorded", 30*time.Second, func() bool { return records() == "a=success" })
	if got := logged(); got != "POST a=running, PUT success" {
		t.Fatalf("the first rollout wrote %q, want POST a=running, PUT success", got)
	}

	second := start()
	waitFor(t, "the second agent to stand by", time.Minute, func() bool { s := second.status(); return s != nil && s["outcome"] == "standby" })
	_ = first.cmd.Process.Signal(syscall.SIGKILL)
	_ = first.cmd.Wait()
	waitFor(t, "the standby to take over", time.Minute, second.leader)
	waitFor(t, "the standby to run release a", time.Minute, deployed(second, "a"))
	before := reads()
	time.Sleep(5 * time.Second) // a few more cycles of the new leader: no-op cycles
	if got := reads(); got != before {
		t.Errorf("the leader's no-op cycles read the environment's records %d times, want none", got-before)
	}
	if got := records(); got != "a=success" {
		t.Errorf("after the takeover the environment lists %q, want a=success only", got)
	}
	if got := logged(); got != "POST a=running, PUT success" {
		t.Errorf("after the takeover the Deployments API got %q, want nothing new", got)
	}

	// A new release after the takeover: recorded running, then success.
	gl.AddDeployment(testenv.Deployment{ID: 2, Job: 12, Pipeline: 2, Environment: "staging", Status: "success", SHA: commit("b"), Finished: time.Now()},
		release(name, commit("b"), env.image, env.port, "    labels:\n      release: b\n"))
	waitFor(t, "release b deployed", 2*time.Minute, deployed(second, "b"))
	waitFor(t, "release b recorded", 30*time.Second, func() bool { return records() == "a=success b=success" })
	if got := logged(); got != "POST a=running, PUT success, POST b=running, PUT success" {
		t.Errorf("release b wrote %q, want POST b=running, PUT success after a's", got)
	}
}
