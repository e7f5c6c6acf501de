package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// The faults that need a swarm of their own: three managers, each a dockerd in a network namespace
// (hack/multinode.sh), with an agent beside each engine as on three manager machines. A manager lost, a
// partition healed, a node whose engine cannot run tasks during a rollout, and a dockerd stopped and started
// again in the middle of a rollout: one agent acts at a time, the stack is not touched by the faults, the
// rollout in flight finishes, nothing is lost or duplicated, and GitLab is told the truth.
func TestFaultMultiManager(t *testing.T) {
	c := testenv.Multinode(t)
	reg := c.Registry()
	_, d1 := testenv.Image(t, reg+"/web:v1", "MESSAGE=v1")
	_, d2 := testenv.Image(t, reg+"/web:v2", "MESSAGE=v2")
	images := []string{reg + "/web:v1@" + d1, reg + "/web:v2@" + d2}
	name := randomName("mn")
	gl := testenv.NewGitLab("glpat-agent", "sawmill/platform")
	gl.SetVariables(testenv.Variable{Key: "DB_PASSWORD", Value: "pw-0", Scope: "*"})
	srv := httptest.NewServer(gl)
	t.Cleanup(srv.Close)
	const port = 18080 // published in host mode on every node, each in its own namespace
	daemonEnv{t: t, url: srv.URL, name: name}.setenv()
	global := "      mode: global\n"
	commit := func(i int) string { return fmt.Sprintf("%039df", i) }
	rel := 0 // the last release published
	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit(0), Finished: time.Now()},
		release(name, commit(0), images[0], port, global))

	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, fmt.Sprintf("lease: {ttl: 6s, name: sawmill-test-lease-%s}\n", name))
	states := []string{"", t.TempDir(), t.TempDir(), t.TempDir()}
	agents := make([]*agentProcess, 4) // agents[n] runs beside node n
	startAgent := func(n int) {
		agents[n] = startAgentProcess(t, []string{"DOCKER_HOST=" + c.Host(n)}, "--config", cfg, "--environment", "staging",
			"--state-dir", states[n], "--policy-mode", "off", "--timeout", "2m", "--interval", "2s")
	}
	stopAgent := func(n int) {
		_ = agents[n].cmd.Process.Signal(syscall.SIGKILL)
		_ = agents[n].cmd.Wait()
		agents[n] = nil
	}
	leaders := func() []int {
		var l []int
		for n := 1; n <= 3; n++ {
			if agents[n] != nil && agents[n].leader() {
				l = append(l, n)
			}
		}
		return l
	}
	leader := func(not int) int {
		t.Helper()
		var l []int
		waitFor(t, "one leader", 2*time.Minute, func() bool { l = leaders(); return len(l) == 1 && l[0] != not })
		return l[0]
	}
	// serves is what node n's task answers on the published port: the hash of its secret, and the image
	// the task runs.
	serves := func(n int) string {
		r, err := c.HTTPClient(n).Get(fmt.Sprintf("http://127.0.0.1:%d/secret/db_password", port))
		if err != nil {
			return err.Error()
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		return strings.TrimSpace(string(b)) + " " + runningImage(c.Docker(n), name+"_web", n)
	}
	// everyNodeServes waits until every node serves want (true), or until or, when given, holds (false).
	var trace []string // what the swarm said during the last wait
	everyNodeServes := func(want string, within time.Duration, or func(got []string) bool) bool {
		t.Helper()
		var got []string
		trace = nil
		deadline := time.Now().Add(within)
		for i := 0; time.Now().Before(deadline); i++ {
			got = []string{serves(1), serves(2), serves(3)}
			if got[0] == want && got[1] == want && got[2] == want {
				return true
			}
			if or != nil && or(got) {
				t.Logf("the swarm during the wait:\n%s", strings.Join(trace, ""))
				return false
			}
			if i%10 == 0 { // what the swarm says, every 2 s, for the failure message
				for n := 1; n <= 3; n++ {
					out, err := exec.Command("docker", "-H", c.Host(n), "service", "inspect", "--format",
						"{{.Spec.TaskTemplate.ContainerSpec.Image}} prev={{if .PreviousSpec}}{{.PreviousSpec.TaskTemplate.ContainerSpec.Image}}{{end}} {{json .UpdateStatus}}", name+"_web").CombinedOutput()
					if err == nil {
						ps, _ := exec.Command("docker", "-H", c.Host(n), "service", "ps", "--no-trunc", "--format", "{{.Node}}:{{.Image}}:{{.DesiredState}}:{{.CurrentState}}:{{.Error}}", "-f", "desired-state=running", name+"_web").CombinedOutput()
						nodes, _ := exec.Command("docker", "-H", c.Host(n), "node", "ls", "--format", "{{.Hostname}}:{{.Status}}:{{.Availability}}:{{.ManagerStatus}}").CombinedOutput()
						trace = append(trace, fmt.Sprintf("%s node%d: %s%snodes: %s", time.Now().Format("15:04:05"), n, out, ps, strings.ReplaceAll(string(nodes), "\n", " ")+"\n"))
						break
					}
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("the swarm during the wait:\n%s", strings.Join(trace, ""))
		t.Errorf("after %s the nodes serve %q, want %q on each", within, got, want)
		for n := 1; n <= 3; n++ {
			out, _ := exec.Command("docker", "-H", c.Host(n), "service", "ps", "--no-trunc", "--format", "{{.Name}} {{.Node}} {{.Image}} desired={{.DesiredState}} {{.CurrentState}} {{.Error}}", name+"_web").CombinedOutput()
			us, _ := exec.Command("docker", "-H", c.Host(n), "service", "inspect", "--format", "{{json .UpdateStatus}}", name+"_web").CombinedOutput()
			t.Logf("node %d sees:\n%s%s", n, out, us)
		}
		t.FailNow()
		return false
	}
	statesOf := func(sha string) []string {
		var s []string
		for _, st := range gl.Statuses() {
			if st.SHA == sha {
				s = append(s, st.State)
			}
		}
		return s
	}
	assertTold := func(sha string) {
		t.Helper()
		var s []string
		waitFor(t, "GitLab told", 2*time.Minute, func() bool { s = statesOf(sha); return len(s) > 0 && s[len(s)-1] == "success" })
		if len(s) == 0 || s[len(s)-1] != "success" || strings.Contains(strings.Join(s, " "), "failed") {
			t.Fatalf("GitLab was told %v for %s, want success and never failed", s, sha[:8])
		}
	}
	// settled waits until agent n has finished a cycle begun after now, and returns that cycle's outcome.
	settled := func(n int) string {
		t.Helper()
		var outcome string
		before := cycles(agents[n])
		waitFor(t, "a cycle of the leader", 2*time.Minute, func() bool {
			if cycles(agents[n]) <= before {
				return false
			}
			s := agents[n].status()
			outcome, _ = s["outcome"].(string)
			return true
		})
		return outcome
	}

	for n := 1; n <= 3; n++ {
		startAgent(n)
	}
	l := leader(0)
	want := sha("pw-0") + " " + images[0]
	everyNodeServes(want, 3*time.Minute, nil)
	assertTold(commit(0))

	if multinodeCase("lost") {
		t.Log("fault: a manager lost")
		var lost []time.Duration
		stuck := 0
		for range repeats() {
			other := l%3 + 1
			before := snapshot(t, c.Docker(other), name)
			at := time.Now()
			c.Crash(l) // the machine with its engine, its tasks and its agent
			stopAgent(l)
			next := leader(l)
			took := time.Since(at)
			if out := settled(next); out != "success" {
				t.Fatalf("the new leader's cycle: %s, want success (nothing to change)", out)
			}
			if snapshot(t, c.Docker(next), name) != before {
				t.Fatal("losing a manager changed the stack's objects")
			}
			c.Start(l)
			waitFor(t, "the lost manager back", 2*time.Minute, func() bool { return c.NodeReady(next, l) })
			startAgent(l)
			// Swarm may list the rejoined node down again for minutes while its engine answers (CI at 16:32 on
			// 2026-11-30: Ready, then down for the whole 2-minute wait, its task shut down and none placed);
			// as an operator would, and as the restart case does, the test restarts that engine once after a
			// minute of it, and counts it in the row.
			polls, down := 0, &downWatch{c: c, from: next, node: l, after: time.Minute}
			restartStuck := func([]string) bool {
				if polls++; polls%10 == 0 && down.poll() {
					t.Logf("node %d down to Swarm for a minute after it rejoined, while its engine answers; its engine restarted", l)
					stuck++
				}
				return false
			}
			everyNodeServes(want, 4*time.Minute, restartStuck)
			if got := leaders(); len(got) != 1 || got[0] != next {
				t.Fatalf("leaders after the manager came back: %v, want only %d", got, next)
			}
			assertTold(commit(0))
			lost = append(lost, took)
			l = next
		}
		faultRow(t, "3 managers, 3 agents: the leader's machine lost (engine, tasks and agent killed)", repeats(),
			fmt.Sprintf("another agent took over; stack unchanged; the machine rejoined and its agent stands by; %d after Swarm listed the rejoined node down for a minute (its engine restarted by the test)", stuck), lost)
	}

	if multinodeCase("partition") {
		t.Log("fault: a partition healed")
		var takeovers, rejoins []time.Duration
		moved := 0
		for range repeats() {
			other := l%3 + 1
			before := snapshot(t, c.Docker(other), name)
			at := time.Now()
			c.Part(l)
			next := leader(l)
			took := time.Since(at)
			if out := settled(next); out != "success" {
				t.Fatalf("the new leader's cycle: %s, want success", out)
			}
			failed := logged(agents[next:next+1], "lease: ") // the holder's lease errors (renewals, cycles)
			c.Heal(l)
			healed := time.Now()
			waitFor(t, "the partitioned manager back", 3*time.Minute, func() bool { return c.NodeReady(next, l) && c.NodeReady(l, l) })
			rejoined := time.Since(healed)
			everyNodeServes(want, 2*time.Minute, nil)
			settled(leader(0))
			// The lease stays with next, unless the Raft election the heal sets off leaves next's engine
			// without a leader for longer than the TTL (6 s here, 30 s by default): next's renewals fail, it
			// stops acting at its local deadline, and whichever agent reaches the swarm first takes the
			// expired lease once next's renewal period after the expiry has passed.
			got := leaders()
			if len(got) != 1 {
				t.Fatalf("leaders after the partition healed: %v, want one", got)
			}
			if got[0] != next {
				if logged(agents[next:next+1], "lease: ") == failed {
					t.Fatalf("the lease went from %d to %d after the heal although %d renewed it without an error", next, got[0], next)
				}
				moved++
				next = got[0]
			}
			if snapshot(t, c.Docker(next), name) != before {
				t.Fatal("the partition changed the stack's objects")
			}
			assertTold(commit(0))
			takeovers, rejoins = append(takeovers, took), append(rejoins, rejoined)
			l = next
		}
		slices.Sort(rejoins)
		faultRow(t, "3 managers, 3 agents: the leader's machine cut off, then reconnected", repeats(),
			fmt.Sprintf("another agent took over (the recovery column); stack unchanged; the node Ready again a median %s after the heal (max %s); one leader (%d of %d times another agent held the lease after the heal: the Raft election the heal set off kept the leader's engine from renewing for longer than the suite's 6 s TTL)",
				rejoins[len(rejoins)/2].Round(time.Second), rejoins[len(rejoins)-1].Round(time.Second), moved, repeats()), takeovers)
	}

	// A node whose engine cannot run tasks during a rollout (its overlay network cannot be joined: the VXLAN
	// interface a restarted engine can leave behind) is a fault of that node, not of the release: the release
	// runs on the other nodes, nothing is rolled back, GitLab is never told failed; once an operator repairs
	// the node, Swarm runs the release there too and GitLab is told success.
	if multinodeCase("nodefault") {
		t.Log("fault: a node that cannot run tasks during a rollout")
		var recovery []time.Duration
		paused := 0
		for range repeats() {
			rel++
			i := rel
			x := l%3 + 1 // not the acting agent's node
			nw, err := c.Docker(l).NetworkInspect(context.Background(), name+"_default", client.NetworkInspectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			vni := nw.Network.Options["com.docker.network.driver.overlay.vxlanid_list"]
			c.Stop(x)
			c.BlockOverlay(x, vni)
			c.Start(x)
			waitFor(t, fmt.Sprintf("node %d rejecting its tasks", x), 2*time.Minute, func() bool {
				return strings.Contains(taskErrors(c.Docker(l), name+"_web", x), "error creating vxlan interface: file exists")
			})
			faults, rollbacks, held, before := logged(agents, "cannot run tasks"), logged(agents, "service rolled back"), logged(agents, "held up by nodes"), reissues(agents)
			secret := fmt.Sprintf("pw-%d", i)
			gl.SetVariables(testenv.Variable{Key: "DB_PASSWORD", Value: secret, Scope: "*"})
			gl.AddDeployment(testenv.Deployment{ID: int64(1 + i), Job: int64(11 + i), Pipeline: int64(1 + i), Environment: "staging", Status: "success", SHA: commit(i), Finished: time.Now()},
				release(name, commit(i), images[i%2], port, global))
			next := sha(secret) + " " + images[i%2]
			waitFor(t, "the agent to name the node that cannot run tasks", 3*time.Minute, func() bool { return logged(agents, "cannot run tasks") > faults })
			settled(leader(0))
			if s := statesOf(commit(i)); slices.Contains(s, "failed") {
				t.Fatalf("GitLab was told %v for a release that only a faulty node could not run", s)
			}
			if n := logged(agents, "service rolled back"); n > rollbacks {
				t.Fatalf("the agent rolled the release back for a node fault")
			}
			if logged(agents, "held up by nodes") > held {
				paused++ // Swarm's updater stopped at the node: the nodes after it keep the previous release
			}
			// A node whose task Swarm's updater was replacing when the agent decided answers from a container
			// that no task lists as running yet (CI saw this once): each node but the faulty one is given a
			// minute to serve the new release or the previous one, with a running task.
			for n := 1; n <= 3; n++ {
				if n == x {
					continue
				}
				got := serves(n)
				for deadline := time.Now().Add(time.Minute); got != next && got != want && time.Now().Before(deadline); got = serves(n) {
					time.Sleep(200 * time.Millisecond)
				}
				if got != next && got != want {
					t.Fatalf("node %d serves %q a minute into the node fault, want the new release or the previous one", n, got)
				}
			}
			at := time.Now()
			c.ClearOverlay(x)
			everyNodeServes(next, 3*time.Minute, nil)
			recovery = append(recovery, time.Since(at))
			assertTold(commit(i))
			l = leader(0)
			if reissues(agents) > before {
				// The paused update was re-issued once the node ran tasks again: Swarm's previous spec is the
				// new version, so the previous release's secret is used by neither spec and the next cycle
				// removes it. Wait for a cycle begun after this one.
				settled(l)
				settled(l)
			}
			assertSecretsClean(t, c.Docker(l), name)
			want = next
		}
		faultRow(t, "3 managers: during a rollout one node's engine cannot join the overlay network (a stale VXLAN interface, moby/libnetwork#1765), repaired later", repeats(),
			fmt.Sprintf("a node fault, not the release's: the agent named the node, rolled nothing back and never told GitLab failed; the release ran on the other nodes (%d of %d times Swarm's update paused at the node: the nodes after it in the update's order kept the previous release until the repair); after the repair every node served the release and GitLab was told success (recovery: from the repair)", paused, repeats()),
			recovery)
	}

	t.Log("fault: dockerd stopped mid-rollout")
	if multinodeCase("restart") {
		rng := rand.New(rand.NewPCG(3, 4))
		var recovery []time.Duration
		reissued, overlay, stuck := 0, 0, 0
		for range repeats() {
			rel++
			i := rel
			secret := fmt.Sprintf("pw-%d", i)
			gl.SetVariables(testenv.Variable{Key: "DB_PASSWORD", Value: secret, Scope: "*"})
			gl.AddDeployment(testenv.Deployment{ID: int64(1 + i), Job: int64(11 + i), Pipeline: int64(1 + i), Environment: "staging", Status: "success", SHA: commit(i), Finished: time.Now()},
				release(name, commit(i), images[i%2], port, global))
			time.Sleep(time.Duration(500+rng.IntN(2500)) * time.Millisecond) // the leader polls every 2 s
			at := time.Now()
			c.Stop(l) // the engine the acting agent talks to, gracefully (its tasks stop too)
			c.Start(l)
			want := sha(secret) + " " + images[i%2]
			// The rollout finishes on every node: the agent re-issues an update that Swarm stalls or pauses
			// for the task the restart shut down. The restarted engine may also come back unable to join the
			// overlay network (a VXLAN interface left behind: moby/libnetwork#1765), and reject every task:
			// a node fault, which the agent must not take for a failed release (no rollback, GitLab never
			// told failed); the test repairs the node as an operator would, and the rollout finishes then.
			// Once in 35 restarts the restarted node stayed down to Swarm for minutes while its engine
			// answered (its worker did not reach the managers): the agent names such a node and does not wait
			// for it; the test, as an operator would, restarts that engine again after 2 minutes.
			polls, repaired := 0, false
			down := &downWatch{c: c, from: l%3 + 1, node: l, after: 2 * time.Minute}
			downsLogged := logged(agents, "Swarm lists as down")
			rolledBack := func(got []string) bool {
				if polls++; !repaired && polls%10 == 0 && strings.Contains(taskErrors(c.Docker(l%3+1), name+"_web", l), "error creating vxlan interface: file exists") {
					t.Logf("repetition %d: node %d's engine cannot join the overlay network; repaired", i, l)
					c.ClearOverlay(l)
					repaired = true
					overlay++
				}
				if polls%10 == 0 && down.poll() {
					t.Logf("repetition %d: node %d down to Swarm for 2 minutes while its engine answers (the agent said so %d time(s)); its engine restarted again", i, l, logged(agents, "Swarm lists as down")-downsLogged)
					stuck++
				}
				s := statesOf(commit(i))
				return len(s) > 0 && s[len(s)-1] == "failed"
			}
			before := reissues(agents)
			finished := everyNodeServes(want, 5*time.Minute, rolledBack)
			recovery = append(recovery, time.Since(at))
			n := reissues(agents) - before
			if n > 0 {
				reissued++
				t.Logf("repetition %d: the agent re-issued Swarm's stalled or paused update %d time(s):\n%s\nthe swarm during the wait:\n%s", i, n, reissueLines(agents, n), strings.Join(trace, ""))
			}
			l = leader(0)
			if !finished {
				t.Fatalf("repetition %d: the rollout failed (GitLab told %v): a restarted engine is no fault of the release; the swarm during the wait:\n%s", i, statesOf(commit(i)), strings.Join(trace, ""))
			}
			assertTold(commit(i))
			if n > 0 {
				// A re-issued update is its own previous spec: the secret of the release before is used by
				// neither spec, and the next cycle removes it. Wait for a cycle begun after this one.
				settled(l)
				settled(l)
			}
			assertSecretsClean(t, c.Docker(l), name)
		}
		faultRow(t, "3 managers: the acting agent's dockerd stopped and restarted mid-rollout", repeats(),
			fmt.Sprintf("every rollout finished on every node, GitLab told success, never failed; %d of them after the agent re-issued Swarm's stalled or paused update; %d after the restarted node could not join the overlay network (a node fault: not rolled back; the node repaired by the test); %d after the restarted node stayed down to Swarm for 2 minutes (the agent named it; its engine restarted again by the test); no duplicate or orphaned secret",
				reissued, overlay, stuck), recovery)
	}
	for n := 1; n <= 3; n++ {
		if agents[n] != nil {
			stopAgent(n)
		}
	}
}

// downWatch restarts a node's engine once, when Swarm (as node from sees it) has listed the node down for
// longer than after while its engine answers: what an operator does with a node that does not rejoin.
type downWatch struct {
	c          *testenv.Cluster
	from, node int
	after      time.Duration
	since      time.Time
	restarted  bool
}

// poll looks once and reports whether it restarted the node's engine just now.
func (w *downWatch) poll() bool {
	if w.restarted {
		return false
	}
	switch {
	case w.c.NodeReady(w.from, w.node):
		w.since = time.Time{}
	case w.since.IsZero():
		w.since = time.Now()
	case time.Since(w.since) > w.after:
		w.c.Stop(w.node)
		w.c.Start(w.node)
		w.restarted = true
		return true
	}
	return false
}

// cycles is how many cycles the agent process has finished (its sync-duration histogram's count).
func cycles(p *agentProcess) int {
	return int(p.metrics()["sawmill_sync_duration_seconds_count"])
}

// runningImage is the image of the task of service that runs on node n (hostname node<n>), or what went wrong.
func runningImage(dc *client.Client, service string, n int) string {
	tasks, err := tasksOn(dc, service, n, make(client.Filters).Add("desired-state", "running"))
	if err != nil {
		return err.Error()
	}
	var images []string
	for _, task := range tasks {
		if task.Status.State == "running" {
			images = append(images, task.Spec.ContainerSpec.Image)
		}
	}
	return strings.Join(images, ",")
}

// tasksOn lists service's tasks (with the filters) that are on node n (hostname node<n>).
func tasksOn(dc *client.Client, service string, n int, filters client.Filters) ([]swarm.Task, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: filters.Add("service", service)})
	if err != nil {
		return nil, err
	}
	nodes, err := dc.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, err
	}
	var out []swarm.Task
	for _, task := range tasks.Items {
		for _, node := range nodes.Items {
			if node.ID == task.NodeID && node.Description.Hostname == fmt.Sprintf("node%d", n) {
				out = append(out, task)
			}
		}
	}
	return out, nil
}

// reissues is how many times the running agents re-issued a stalled Swarm update (from their logs).
func reissues(agents []*agentProcess) int { return logged(agents, "re-issued it (force update)") }

// logged is how many times the running agents' logs say s.
func logged(agents []*agentProcess, s string) int {
	n := 0
	for _, p := range agents {
		if p != nil {
			p.mu.Lock()
			n += strings.Count(p.out.String(), s)
			p.mu.Unlock()
		}
	}
	return n
}

// taskErrors are the errors of service's tasks on node n (hostname node<n>), one a line.
func taskErrors(dc *client.Client, service string, n int) string {
	tasks, err := tasksOn(dc, service, n, make(client.Filters))
	if err != nil {
		return err.Error()
	}
	var errs []string
	for _, task := range tasks {
		if task.Status.Err != "" {
			errs = append(errs, task.Status.Err)
		}
	}
	return strings.Join(errs, "\n")
}

// multinodeCase reports whether the 3-manager case name (lost, partition, nodefault, restart) runs: all do unless
// FAULT_MULTINODE_CASES lists some (comma-separated), to repeat one case alone.
func multinodeCase(name string) bool {
	v := os.Getenv("FAULT_MULTINODE_CASES")
	return v == "" || slices.Contains(strings.Split(v, ","), name)
}

// reissueLines are the last n re-issue lines of the running agents' logs.
func reissueLines(agents []*agentProcess, n int) string {
	var lines []string
	for _, p := range agents {
		if p != nil {
			p.mu.Lock()
			for l := range strings.Lines(p.out.String()) {
				if strings.Contains(l, "re-issued it (force update)") {
					lines = append(lines, l)
				}
			}
			p.mu.Unlock()
		}
	}
	slices.Sort(lines) // by their time
	return strings.Join(lines[max(0, len(lines)-n):], "")
}
