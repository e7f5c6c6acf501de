package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// Two agents as their own processes (as on two managers: each its own task and state directory), one lease
// of the test's own, signatures verified. Deployments 1 and 2 roll out. agent rollback run in the STANDBY's
// task (its state directory, the daemon's --config) reaches the leader through the swarm: exit 0, the
// leader rolls back to 1 and pins it, and no request or answer is left in the swarm. Deployment 3 lifts the
// pin. The leader is killed; the other agent takes over, having rolled out nothing but 3 itself; agent
// rollback with no --to on it goes to the previous successful release that ran on the swarm (1, which the
// old leader rolled back to), read from the history the agents share in the swarm: with only its own
// history it would have none.
func TestRollbackThroughTheSwarm(t *testing.T) {
	p := startAgentPair(t, "pw-rollback")
	dc, images, cfg, deploy, running, pinOf, states, ours := p.dc, p.images, p.cfg, p.deploy, p.running, p.pinOf, p.states, p.configs
	leader, standby := p.leader, p.other
	waitFor(t, "1 to run", 2*time.Minute, func() bool { return running() == images["v1"] })
	deploy(2, "v2")
	waitFor(t, "2 to run", 2*time.Minute, func() bool { return running() == images["v2"] && leader.status()["release"] == "deployment-2" })

	// A target that is not a release nor a commit: exit 2 at once, nothing left in the swarm.
	if r := runAgent(t, dc, "rollback", "--config", cfg, "--state-dir", states[standby], "--to", "v1; rm -rf /"); r.code != 2 || len(ours(".request-")) != 0 {
		t.Fatalf("rollback to a bad target: exit %d, requests %v", r.code, ours(".request-"))
	}
	// Through the standby's task: the request travels through the swarm to the leader, which rolls back.
	r := runAgent(t, dc, "rollback", "--config", cfg, "--state-dir", states[standby], "--to", "deployment-1", "--reason", "asked on another manager", "--wait", "2m")
	if r.code != 0 || !strings.Contains(r.stdout, "rolled back to deployment-1") {
		t.Fatalf("agent rollback through the standby: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := running(); got != images["v1"] {
		t.Fatalf("after the rollback the swarm runs %s, want 1 (%s)", got, images["v1"])
	}
	if p := pinOf(leader); p != "deployment-1" {
		t.Fatalf("the leader's pin %q, want deployment-1", p)
	}
	if left := append(ours(".request-"), ours(".answer-")...); len(left) != 0 {
		t.Fatalf("left in the swarm after the answer: %v", left)
	}
	// A release the leader cannot find: the leader's answer, exit 2.
	if r := runAgent(t, dc, "rollback", "--config", cfg, "--state-dir", states[standby], "--to", "deployment-99", "--wait", "2m"); r.code != 2 || !strings.Contains(r.stderr, "deployment-99") {
		t.Fatalf("rollback to an unknown deployment: exit %d\n%s", r.code, r.stderr)
	}
	if running() != images["v1"] {
		t.Fatal("a refused rollback changed what runs")
	}

	// 3 lifts the pin.
	deploy(3, "v3")
	waitFor(t, "3 to run and the pin to lift", 3*time.Minute, func() bool {
		return running() == images["v3"] && pinOf(leader) == "" && leader.status()["release"] == "deployment-3"
	})

	// The leader dies; the standby takes over, rolls out nothing new (3 runs) and has no history of its own
	// before 3.
	_ = leader.cmd.Process.Signal(syscall.SIGKILL)
	_ = leader.cmd.Wait()
	waitFor(t, "the standby to take over", time.Minute, standby.leader)
	waitFor(t, "the new leader to run 3", 2*time.Minute, func() bool {
		return standby.status()["release"] == "deployment-3" && standby.status()["outcome"] == "success"
	})
	r = runAgent(t, dc, "rollback", "--config", cfg, "--state-dir", states[standby], "--wait", "2m")
	if r.code != 0 || !strings.Contains(r.stdout, "rolled back to deployment-1") {
		t.Fatalf("agent rollback (no --to) on the new leader: exit %d, want 0 and deployment-1\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got, p := running(), pinOf(standby); got != images["v1"] || p != "deployment-1" {
		t.Fatalf("after the rollback on the new leader: runs %s (want %s), pin %q", got, images["v1"], p)
	}
	// Its history lists what the old leader rolled out too.
	if h := runAgent(t, dc, "history", "--config", cfg, "--state-dir", states[standby]); h.code != 0 || !strings.Contains(h.stdout, "deployment-2 ") {
		t.Fatalf("agent history of the new leader: exit %d\n%s", h.code, h.stdout)
	}
}

// agentPair is two agents as their own processes (as on two managers: each its own task and state
// directory) following GitLab's staging deployments of one stack, with a lease of the test's own and
// signatures verified (startAgentPair); deployment 1 is made before they start.
type agentPair struct {
	dc            *client.Client
	name, lease   string
	images        map[string]string
	cfg           string
	deploy        func(id int64, v string) string
	states        map[*agentProcess]string
	leader, other *agentProcess
}

// running is the image the stack's web service runs.
func (p *agentPair) running() string { return serviceImage(p.dc, p.name+"_web") }

// pinOf is the release an agent's /status says is pinned ("" none).
func (p *agentPair) pinOf(a *agentProcess) string {
	if pin, ok := a.status()["pin"].(map[string]any); ok {
		r, _ := pin["release"].(string)
		return r
	}
	return ""
}

// configs lists the names of the swarm's configs named <lease><infix>...
func (p *agentPair) configs(infix string) []string {
	l, _ := p.dc.ConfigList(context.Background(), client.ConfigListOptions{Filters: make(client.Filters).Add("name", p.lease+infix)})
	var names []string
	for _, c := range l.Items {
		names = append(names, c.Spec.Name)
	}
	return names
}

func startAgentPair(t *testing.T, password string) *agentPair {
	t.Helper()
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: password, Scope: "*"})
	dc, reg := env.dc, env.reg
	images, key := signedImages(t, reg)
	p := &agentPair{dc: dc, images: images, cfg: filepath.Join(t.TempDir(), "agent.yaml"), deploy: deployer(env.gl, env.name, env.port, images),
		states: map[*agentProcess]string{}, name: env.name, lease: "sawmill-test-lease-" + env.name}
	pem := strings.ReplaceAll(strings.TrimSpace(key.PublicPEM), "\n", "\n            ")
	writeFile(t, p.cfg, fmt.Sprintf("environment: staging\nlease: {ttl: 6s, name: %s}\nhistory: {keep: 5}\ntrust:\n  rules:\n    - pattern: %q\n      authorities:\n        - name: release-key\n          key: |\n            %s\n",
		p.lease, reg+"/**", pem))
	p.deploy(1, "v1")
	envVars := []string{"DOCKER_HOST=" + os.Getenv("SAWMILL_TEST_DOCKER_HOST")}
	var agents []*agentProcess
	for range 2 {
		state := t.TempDir()
		a := startAgentProcess(t, envVars, "--config", p.cfg, "--skip-verify=false", "--environment", "staging", "--state-dir", state,
			"--policy-mode", "warn", "--timeout", "2m", "--interval", "1s")
		p.states[a], agents = state, append(agents, a)
	}
	waitFor(t, "one leader", 2*time.Minute, func() bool {
		if agents[0].leader() != agents[1].leader() {
			p.leader, p.other = agents[0], agents[1]
			if agents[1].leader() {
				p.leader, p.other = agents[1], agents[0]
			}
			return true
		}
		return false
	})
	return p
}
