package swarm

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

func globalSpec(image string) swarm.ServiceSpec {
	return swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: "s_web"},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image}},
		Mode:         swarm.ServiceMode{Global: &swarm.GlobalService{}},
		UpdateConfig: &swarm.UpdateConfig{Monitor: 5 * time.Second},
	}
}

func task(id, node string, spec swarm.TaskSpec, state swarm.TaskState, at time.Time) swarm.Task {
	t := swarm.Task{ID: id, ServiceID: "svc1", NodeID: node, Spec: spec, DesiredState: swarm.TaskStateRunning,
		Status: swarm.TaskStatus{State: state, Timestamp: at}}
	t.CreatedAt = at
	return t
}

// What the 3-manager fault suite saw: the global service's update "updating", two nodes on the new version,
// the third (its manager restarted) still on the old one, and nothing happening.
func TestStalledUpdateIsDetected(t *testing.T) {
	start := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	v1, v2 := globalSpec("web:1"), globalSpec("web:2")
	svc := swarm.Service{ID: "svc1", Spec: v2, PreviousSpec: &v1,
		UpdateStatus: &swarm.UpdateStatus{State: swarm.UpdateStateUpdating, StartedAt: &start}}
	tg := target{id: "svc1", name: "s_web", updated: true, since: start.Add(-time.Second)}
	tasks := []swarm.Task{
		task("new1", "node1", v2.TaskTemplate, swarm.TaskStateRunning, start.Add(4*time.Second)),
		task("new2", "node2", v2.TaskTemplate, swarm.TaskStateRunning, start.Add(12*time.Second)),
		task("old3", "node3", v1.TaskTemplate, swarm.TaskStateRunning, start.Add(-time.Hour)),
	}
	// The last change at 12 s; the period is the monitor (5 s) plus the margin (30 s).
	for _, c := range []struct {
		at   time.Duration
		want bool
	}{{20 * time.Second, false}, {46 * time.Second, false}, {47 * time.Second, true}, {2 * time.Minute, true}} {
		if idle, _, got := stalled(tg, svc, tasks, start.Add(c.at)); got != c.want {
			t.Errorf("at %s (idle %s): stalled %v, want %v", c.at, idle, got, c.want)
		}
	}
	late := start.Add(2 * time.Minute)
	// Not stalled: the update completed, or every task runs the new version (Swarm about to say so), or a
	// task changed state lately, or the service was created (no update), or the update is not this rollout's.
	completed := svc
	completed.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateCompleted, StartedAt: &start}
	if _, _, ok := stalled(tg, completed, tasks, late); ok {
		t.Error("a completed update taken for stalled")
	}
	allNew := append(tasks[:2:2], task("new3", "node3", v2.TaskTemplate, swarm.TaskStateRunning, start.Add(20*time.Second)))
	if _, _, ok := stalled(tg, svc, allNew, late); ok {
		t.Error("an update whose tasks all run the new version taken for stalled")
	}
	moving := append(tasks[:3:3], task("new3", "node3", v2.TaskTemplate, swarm.TaskStatePreparing, late.Add(-10*time.Second)))
	if _, _, ok := stalled(tg, svc, moving, late); ok {
		t.Error("an update with a task that changed 10 s ago taken for stalled")
	}
	created := tg
	created.updated, created.created = false, true
	if _, _, ok := stalled(created, svc, tasks, late); ok {
		t.Error("a created service taken for stalled")
	}
	reissued := tg
	reissued.reissuedAt = late.Add(-time.Second)
	if _, _, ok := stalled(reissued, svc, tasks, late); ok {
		t.Error("an update re-issued a second ago taken for stalled")
	}
}

// stallClient is an engine whose updater stalls on node3 until the update is written again: the service
// and its tasks as a manager lists them, and the writes the agent makes.
type stallClient struct {
	Client
	now     func() time.Time
	svc     swarm.Service
	tasks   []swarm.Task
	updates []client.ServiceUpdateOptions
	// recovers: a re-issued update replaces node3's task (false: Swarm stalls whatever the agent does).
	recovers bool
	// down: the nodes NodeList gives as down.
	down map[string]bool
}

func (c *stallClient) ServiceList(context.Context, client.ServiceListOptions) (client.ServiceListResult, error) {
	return client.ServiceListResult{Items: []swarm.Service{c.svc}}, nil
}

func (c *stallClient) ServiceInspect(context.Context, string, client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	return client.ServiceInspectResult{Service: c.svc}, nil
}

func (c *stallClient) TaskList(context.Context, client.TaskListOptions) (client.TaskListResult, error) {
	return client.TaskListResult{Items: c.tasks}, nil
}

func (c *stallClient) ServiceUpdate(_ context.Context, _ string, o client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	c.updates = append(c.updates, o)
	now := c.now()
	prev := c.svc.Spec
	c.svc.PreviousSpec, c.svc.Spec = &prev, o.Spec
	c.svc.Version.Index++
	state := swarm.UpdateStateUpdating
	if c.recovers || taskJSON(o.Spec.TaskTemplate) == taskJSON(c.tasks[2].Spec) { // recovered, or rolled back
		state = swarm.UpdateStateCompleted
		for i := range c.tasks {
			c.tasks[i] = task(c.tasks[i].ID+"'", c.tasks[i].NodeID, o.Spec.TaskTemplate, swarm.TaskStateRunning, now)
		}
	}
	c.svc.UpdateStatus = &swarm.UpdateStatus{State: state, StartedAt: &now}
	return client.ServiceUpdateResult{}, nil
}

func stalledRollout(recovers bool) (*stallClient, *Applier, target) {
	start := time.Now()
	v1, v2 := globalSpec("web:1"), globalSpec("web:2")
	c := &stallClient{now: time.Now, recovers: recovers,
		svc: swarm.Service{ID: "svc1", Spec: v2, PreviousSpec: &v1, UpdateStatus: &swarm.UpdateStatus{State: swarm.UpdateStateUpdating, StartedAt: &start}},
		tasks: []swarm.Task{
			task("new1", "node1", v2.TaskTemplate, swarm.TaskStateRunning, start.Add(2*time.Second)),
			task("new2", "node2", v2.TaskTemplate, swarm.TaskStateRunning, start.Add(4*time.Second)),
			task("old3", "node3", v1.TaskTemplate, swarm.TaskStateRunning, start.Add(-time.Hour)),
		}}
	a := &Applier{Client: c, Log: slog.New(slog.DiscardHandler), Timeout: 2 * time.Minute, Poll: 2 * time.Second, MaxTaskFailures: 3, Now: time.Now}
	return c, a, target{id: "svc1", name: "s_web", updated: true, since: start.Add(-time.Second)}
}

// A stalled update is re-issued once (ForceUpdate raised, the same spec otherwise) and the rollout converges.
func TestConvergeReissuesAStalledUpdate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := stalledRollout(true)
		start := time.Now()
		if f, _ := a.converge(context.Background(), []target{tg}); len(f) != 0 {
			t.Fatalf("failures %v", f)
		}
		if len(c.updates) != 1 {
			t.Fatalf("%d writes, want one re-issue", len(c.updates))
		}
		if u := c.updates[0].Spec; u.TaskTemplate.ForceUpdate != 1 || image(u) != "web:2" {
			t.Fatalf("re-issued force update %d, image %s; want 1, web:2", u.TaskTemplate.ForceUpdate, image(u))
		}
		// Idle from 4 s: re-issued at the first poll past 4+35 s, then the monitor of the new tasks.
		if took := time.Since(start); took < 39*time.Second || took > 50*time.Second {
			t.Fatalf("converged after %s, want about 45s", took)
		}
	})
}

// An update that stays stalled is re-issued at most twice; then the rollout fails at its deadline (the
// stalled time added) and the rollback writes the spec from before the rollout, not Swarm's previous spec
// (the re-issued new version).
func TestAStallThatStaysFailsAndRollsBackToTheSpecBefore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := stalledRollout(false)
		start := time.Now()
		targets := []target{tg}
		f, _ := a.converge(context.Background(), targets)
		if len(f) != 1 || !strings.Contains(f[0].Reason, "did not converge within 2m0s") {
			t.Fatalf("failures %v", f)
		}
		if len(c.updates) != maxReissues {
			t.Fatalf("%d re-issues, want %d", len(c.updates), maxReissues)
		}
		if took := time.Since(start); took < 2*time.Minute+70*time.Second {
			t.Fatalf("failed after %s: the stalled time was not added to the 2m timeout", took)
		}
		rb := a.rollback(context.Background(), targets, f)
		if len(rb.rolledBack) != 1 || len(rb.notDone) != 0 {
			t.Fatalf("rollback %+v", rb)
		}
		last := c.updates[len(c.updates)-1]
		if image(last.Spec) != "web:1" || last.Rollback != "" {
			t.Fatalf("the rollback wrote image %s (rollback %q), want the spec from before: web:1", image(last.Spec), last.Rollback)
		}
	})
}

// An agent that takes over a rollout another agent re-issued has no spec from before it: Swarm's previous
// spec is the new version with another ForceUpdate. Rolling back to it would claim a rollback that is none.
func TestNoRollbackToAReissuedSpec(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := stalledRollout(false)
		forced := c.svc.Spec
		forced.TaskTemplate.ForceUpdate = 1
		c.svc.PreviousSpec, c.svc.Spec = &c.svc.Spec, forced
		rb := a.rollback(context.Background(), []target{tg}, []Failure{{Service: "s_web", Reason: "timeout"}})
		if len(rb.rolledBack) != 0 || len(rb.notDone) != 1 || !strings.Contains(rb.notDone[0], "re-issued") || len(c.updates) != 0 {
			t.Fatalf("rollback %+v, writes %d", rb, len(c.updates))
		}
	})
}

// Swarm pauses an update when a task of the new version ends early. A task that ended because its node's
// engine stopped (shut down, not failed) says nothing about the release: the update is re-issued. One that
// failed fails the rollout at once, with no write.
func TestPausedForATaskThatDidNotFail(t *testing.T) {
	for _, c := range []struct {
		state   swarm.TaskState
		reissue bool
	}{{swarm.TaskStateShutdown, true}, {swarm.TaskStateOrphaned, true}, {swarm.TaskStateFailed, false}} {
		synctest.Test(t, func(t *testing.T) {
			cl, a, tg := stalledRollout(true)
			now := time.Now()
			ended := task("ended", "node3", cl.svc.Spec.TaskTemplate, c.state, now.Add(time.Second))
			ended.DesiredState = swarm.TaskStateShutdown
			cl.tasks = append(cl.tasks, ended)
			cl.svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, StartedAt: &now,
				Message: "update paused due to failure or early termination of task ended"}
			f, _ := a.converge(context.Background(), []target{tg})
			switch {
			case c.reissue && (len(f) != 0 || len(cl.updates) != 1 || cl.updates[0].Spec.TaskTemplate.ForceUpdate != 1):
				t.Errorf("%s: failures %v, %d writes; want converged after one re-issue", c.state, f, len(cl.updates))
			case !c.reissue && (len(f) != 1 || !strings.Contains(f[0].Reason, "update paused by Swarm") || len(cl.updates) != 0):
				t.Errorf("%s: failures %v, %d writes; want the pause to fail the rollout, no write", c.state, f, len(cl.updates))
			}
		})
	}
}

// NodeList: every node a task is on, ready and active.
func (c *stallClient) NodeList(context.Context, client.NodeListOptions) (client.NodeListResult, error) {
	nodes := readyNodes(c.tasks)
	for i := range nodes {
		if c.down[nodes[i].ID] {
			nodes[i].Status.State = swarm.NodeStateDown
		}
	}
	return client.NodeListResult{Items: nodes}, nil
}

func readyNodes(tasks []swarm.Task) []swarm.Node {
	seen := map[string]bool{}
	var out []swarm.Node
	for _, t := range tasks {
		if t.NodeID != "" && !seen[t.NodeID] {
			seen[t.NodeID] = true
			n := swarm.Node{ID: t.NodeID, Status: swarm.NodeStatus{State: swarm.NodeStateReady}}
			n.Spec.Availability = swarm.NodeAvailabilityActive
			n.Description.Hostname = t.NodeID
			out = append(out, n)
		}
	}
	return out
}

// After a manager restart Swarm's updater can stay "updating" with every task already replaced: the rollout
// converges once nothing has changed for the stall period (monitor 5 s + 30 s after the last task ran at
// 6 s), without Swarm's word (before, it ran into the timeout and was rolled back) and without a re-issue.
func TestUpdatingWithEveryTaskReplacedConverges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := stalledRollout(false)
		start := time.Now()
		c.tasks[2] = task("new3", "node3", c.svc.Spec.TaskTemplate, swarm.TaskStateRunning, start.Add(6*time.Second))
		if f, _ := a.converge(context.Background(), []target{tg}); len(f) != 0 {
			t.Fatalf("failures %v", f)
		}
		if took := time.Since(start); took < 41*time.Second || took > 44*time.Second {
			t.Fatalf("converged after %s, want about 41s (the last task ran at 6s; monitor 5s + 30s)", took)
		}
		if len(c.updates) != 0 {
			t.Fatalf("%d writes, want none", len(c.updates))
		}
	})
}

// What the 3-manager fault suite saw once in 35 restarts: the restarted node stayed down to Swarm for minutes
// (its engine answered, its worker did not reach the managers), its new task pending ("1 node not available for
// new tasks") and Swarm's update "updating". The rollout converges on the other nodes once nothing has moved
// for the stall period, without a write, and says which node Swarm lists as down.
func TestADownNodeIsNamedNotWaitedFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := stalledRollout(false)
		start := time.Now()
		pending := task("new3", "node3", c.svc.Spec.TaskTemplate, swarm.TaskStatePending, start.Add(6*time.Second))
		pending.DesiredState = swarm.TaskStateShutdown
		pending.Status.Err = "no suitable node (1 node not available for new tasks)"
		c.tasks[2].DesiredState, c.tasks[2].Status.State = swarm.TaskStateShutdown, swarm.TaskStateShutdown
		c.tasks = append(c.tasks, pending)
		c.down = map[string]bool{"node3": true}
		f, degraded := a.converge(context.Background(), []target{tg})
		if len(f) != 0 || len(c.updates) != 0 {
			t.Fatalf("failures %v, %d writes; want converged on node1 and node2, no write", f, len(c.updates))
		}
		if len(degraded) != 1 || !strings.Contains(degraded[0], "s_web: node node3: down (Swarm starts the release there once the node is ready)") {
			t.Fatalf("degraded %q, want node3 named as down", degraded)
		}
		// A node that is up again is waited for: the same tasks with node3 ready never converge.
		c.down = nil
		if f, _ := a.converge(context.Background(), []target{tg}); len(f) != 1 || !strings.Contains(f[0].Reason, "did not converge") {
			t.Fatalf("failures %v with node3 ready, want the rollout not converged", f)
		}
	})
}
