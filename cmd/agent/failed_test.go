package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// A release whose new service never becomes healthy is a failed rollout on the first cycle: the new service
// is removed, GitLab is told. It is not rolled out again on the next cycles (no loop of failing rollouts),
// its status stays failed, until an operator asks (agent retry).
func TestDaemonHoldsAFailedRelease(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-held", Scope: "*"})
	dc, gl, name := env.dc, env.gl, env.name
	_, bad := testenv.Image(t, env.reg+"/web:bad", "EXIT_CODE=3")
	state := t.TempDir()
	commit := strings.Repeat("f", 40)
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit, Finished: time.Now()},
		release(name, commit, env.reg+"/web:bad@"+bad, env.port, "      restart_policy: {condition: on-failure, max_attempts: 1}\n"))
	once := func() agentRun {
		return runAgent(t, dc, "run", "--once", "--environment", "staging", "--state-dir", state, "--listen", "", "--policy-mode", "off", "--timeout", "40s")
	}
	services := func() int {
		l, _ := dc.ServiceList(context.Background(), client.ServiceListOptions{Filters: make(client.Filters).Add("label", "com.docker.stack.namespace="+name)})
		return len(l.Items)
	}

	r := once()
	if r.code != 1 || !strings.Contains(r.stderr, "removed (new, never converged): "+name+"_web") {
		t.Fatalf("first cycle: exit %d, want 1 with the new service removed\n%s", r.code, r.stderr)
	}
	if n := services(); n != 0 {
		t.Fatalf("the new service that never converged is still there (%d services)", n)
	}
	assertStatus(t, gl, commit, "sawmill/staging", "failed")

	// The next cycles do not roll it out again.
	for i := range 2 {
		start := time.Now()
		r = once()
		if r.code != 1 || services() != 0 || time.Since(start) > 20*time.Second {
			t.Fatalf("cycle %d after the failure: exit %d, %d services, %s", i+2, r.code, services(), time.Since(start))
		}
	}
	var st struct {
		Outcome string `json:"outcome"`
		Held    bool   `json:"held"`
	}
	b, _ := os.ReadFile(filepath.Join(state, "state.json"))
	if err := json.Unmarshal(b, &st); err != nil || st.Outcome != "failed" {
		t.Fatalf("state %s: %v", b, err)
	}
	if n := len(gl.Statuses()); n != 1 {
		t.Fatalf("GitLab was told %d times, want once: %+v", n, gl.Statuses())
	}

	// agent retry: the next cycle rolls it out again (and it fails again).
	if r := runAgent(t, dc, "retry", "--state-dir", state); r.code != 0 {
		t.Fatalf("agent retry: exit %d", r.code)
	}
	r = once()
	if r.code != 1 || !strings.Contains(r.stderr, "removed (new, never converged)") {
		t.Fatalf("after agent retry: exit %d\n%s", r.code, r.stderr)
	}
}
