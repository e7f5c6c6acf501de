package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// Two agents as their own processes, each with its own state directory (as on two managers, each with its
// volume), one lease of the test's own, signatures verified. A then B are deployed; agent rollback through
// the leader's state directory pins A; the leader is killed; the other agent takes the lease over and keeps A
// (it never saw the rollback and never kept A: it reads the swarm's pin and fetches deployment 1 from GitLab
// again, verified again), cycle after cycle; a newer deployment C lifts the pin and C runs. Then agent unpin,
// run with another agent's state directory, lifts a pin the acting agent set.
func TestPinHoldsAcrossAgents(t *testing.T) {
	p := startAgentPair(t, "pw-pin")
	dc, images, cfg, deploy, running, pinOf, states, leader, other := p.dc, p.images, p.cfg, p.deploy, p.running, p.pinOf, p.states, p.leader, p.other
	pinConfigs := func() int { return len(p.configs(".pin-")) }
	waitFor(t, "A to run", 2*time.Minute, func() bool { return running() == images["v1"] })
	deploy(2, "v2")
	waitFor(t, "B to run", 2*time.Minute, func() bool { return running() == images["v2"] && leader.status()["release"] == "deployment-2" })

	// A rollback left in the standby's state directory (no --config: the environment is unknown, so it is not
	// sent through the swarm) is refused (exit 2): it would wait until that agent acts.
	if r := runAgent(t, dc, "rollback", "--state-dir", states[other], "--to", "deployment-1"); r.code != 2 || !strings.Contains(r.stderr, "stands by") {
		t.Fatalf("rollback through the standby: exit %d, want 2 (it stands by)\n%s", r.code, r.stderr)
	}
	// Rollback through the leader's state directory: A runs, pinned, and the pin is in the swarm.
	if r := runAgent(t, dc, "rollback", "--state-dir", states[leader], "--reason", "v2 breaks checkout", "--wait", "2m"); r.code != 0 || !strings.Contains(r.stdout, "rolled back to deployment-1") {
		t.Fatalf("agent rollback: exit %d", r.code)
	}
	if got := running(); got != images["v1"] {
		t.Fatalf("after the rollback the swarm runs %s, want A", got)
	}
	if n := pinConfigs(); n != 1 || pinOf(leader) != "deployment-1" {
		t.Fatalf("%d pin configs in the swarm, the leader's pin %q", n, pinOf(leader))
	}

	// The leader dies; the other agent takes over and keeps A, cycle after cycle.
	_ = leader.cmd.Process.Signal(syscall.SIGKILL)
	_ = leader.cmd.Wait()
	waitFor(t, "the other agent to take over", time.Minute, other.leader)
	takeover := time.Now()
	cycles := func() (n int, bad string) {
		list, _ := other.status()["cycles"].([]any)
		for _, c := range list {
			m, _ := c.(map[string]any)
			at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
			if !at.After(takeover) || m["outcome"] == "standby" {
				continue
			}
			n++
			if m["release"] != "deployment-1" || m["outcome"] != "success" {
				bad = fmt.Sprintf("%v", m)
			}
		}
		return n, bad
	}
	waitFor(t, "three cycles of the new leader", 2*time.Minute, func() bool {
		if got := running(); got != images["v1"] {
			t.Fatalf("after the takeover the swarm runs %s, want A %s: the pin did not hold", got, images["v1"])
		}
		n, bad := cycles()
		if bad != "" {
			t.Fatalf("a cycle of the new leader: %s, want deployment-1 success", bad)
		}
		return n >= 3
	})
	if got, p := running(), pinOf(other); got != images["v1"] || p != "deployment-1" {
		t.Fatalf("the new leader: runs %s, pin %q", got, p)
	}
	// Its history says it rolled out deployment 1 (fetched again, verified again) and shows the swarm's pin.
	if h := runAgent(t, dc, "history", "--config", cfg, "--state-dir", states[other]); h.code != 0 || !strings.Contains(h.stdout, "pinned to deployment-1") ||
		!strings.Contains(h.stdout, "v2 breaks checkout") || !strings.Contains(h.stdout, "deployment-1 ") {
		t.Fatalf("agent history of the new leader: exit %d\n%s", h.code, h.stdout)
	}

	// A newer deployment lifts the pin: C runs, and the swarm holds no pin.
	deploy(3, "v3")
	waitFor(t, "C to run and the pin to lift", 2*time.Minute, func() bool {
		return running() == images["v3"] && pinOf(other) == "" && pinConfigs() == 0
	})

	// Pinned again by the acting agent; agent unpin run with the dead agent's state directory (another
	// manager's agent task) removes the swarm's pin: C runs again.
	if r := runAgent(t, dc, "rollback", "--state-dir", states[other], "--to", "deployment-2", "--wait", "2m"); r.code != 0 || running() != images["v2"] {
		t.Fatalf("rollback to B: exit %d, runs %s", r.code, running())
	}
	if r := runAgent(t, dc, "unpin", "--config", cfg, "--state-dir", states[leader]); r.code != 0 || !strings.Contains(r.stdout, "unpinned from deployment-2") {
		t.Fatalf("agent unpin from another agent's task: exit %d\n%s", r.code, r.stdout)
	}
	waitFor(t, "C to run after unpin", 2*time.Minute, func() bool { return running() == images["v3"] && pinOf(other) == "" })
	if r := runAgent(t, dc, "unpin", "--config", cfg, "--state-dir", states[leader]); r.code != 0 || !strings.Contains(r.stdout, "not pinned") {
		t.Fatalf("unpin when not pinned: exit %d\n%s", r.code, r.stdout)
	}
}

// signedImages builds web:v1, v2 and v3 in the test registry reg, signs each with a new key, and returns them
// pinned to their digests by version, with the key.
func signedImages(t *testing.T, reg string) (map[string]string, testenv.Key) {
	t.Helper()
	key := testenv.NewKey(t)
	images := map[string]string{}
	for _, v := range []string{"v1", "v2", "v3"} {
		_, d := testenv.Image(t, reg+"/web:"+v, "MESSAGE="+v)
		key.Sign(t, reg+"/web@"+d)
		images[v] = reg + "/web:" + v + "@" + d
	}
	return images, key
}

// deployer returns deploy(id, v): a successful deployment id to staging (job 10+id, commit id repeated) of
// the release of stack name whose web service runs images[v]; it returns the commit.
func deployer(gl *testenv.GitLab, name string, port int, images map[string]string) func(id int64, v string) string {
	base := time.Now()
	return func(id int64, v string) string {
		commit := strings.Repeat(fmt.Sprint(id), 40)
		gl.AddDeployment(testenv.Deployment{ID: id, Job: 10 + id, Pipeline: id, Environment: "staging", Status: "success", SHA: commit,
			Finished: base.Add(time.Duration(id) * time.Minute)}, release(name, commit, images[v], port, ""))
		return commit
	}
}

// serviceImage is the image the swarm's service runs ("" when there is no such service).
func serviceImage(dc *client.Client, service string) string {
	svc, err := dc.ServiceInspect(context.Background(), service, client.ServiceInspectOptions{})
	if err != nil {
		return ""
	}
	return svc.Service.Spec.TaskTemplate.ContainerSpec.Image
}
