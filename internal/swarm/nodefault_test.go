package swarm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/fault"
)

// vxlan is what a node whose overlay network did not come back with its restarted engine says of every task
// (moby/libnetwork#1765; the 3-manager fault suite saw it).
const vxlan = `network sandbox join failed: subnet sandbox join failed for "10.213.65.0/24": error creating vxlan interface: file exists`

func rejected(id, node string, spec swarm.TaskSpec, at time.Time) swarm.Task {
	t := task(id, node, spec, swarm.TaskStateRejected, at)
	t.DesiredState = swarm.TaskStateShutdown
	t.Status.Err = vxlan
	return t
}

// nodeFaultRollout: a global service updated to web:2 that runs on node1 and node2, while node3 rejects every
// task of it.
func nodeFaultRollout() (*stallClient, *Applier, target) {
	c, a, tg := stalledRollout(false)
	start := time.Now()
	v2 := c.svc.Spec.TaskTemplate
	c.tasks = append(c.tasks[:2:2],
		rejected("rej3c", "node3", v2, start.Add(15*time.Second)),
		rejected("rej3b", "node3", v2, start.Add(10*time.Second)),
		rejected("rej3a", "node3", v2, start.Add(5*time.Second)))
	c.svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateCompleted, StartedAt: &start}
	return c, a, tg
}

// A node that rejects every task while the new version runs on the others is a fault of the node: the
// rollout converges on the other nodes and says which node it could not use; nothing is rolled back.
func TestANodeThatRejectsEveryTaskDoesNotFailTheRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := nodeFaultRollout()
		f, degraded := a.converge(context.Background(), []target{tg})
		if len(f) != 0 {
			t.Fatalf("failures %v: three rejections on one node, the new version running on the others, taken for a bad release", f)
		}
		if len(degraded) != 1 || !strings.Contains(degraded[0], "node node3: rejected: "+vxlan) {
			t.Fatalf("degraded %q, want node3 and its rejection named", degraded)
		}
		if len(c.updates) != 0 {
			t.Fatalf("%d writes, want none", len(c.updates))
		}
	})
}

// The same rejections on every node are the release's: the rollout fails, and it is not a node fault.
func TestRejectionsOnEveryNodeFailTheRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := nodeFaultRollout()
		start := time.Now()
		v2 := c.svc.Spec.TaskTemplate
		c.tasks = []swarm.Task{rejected("r1", "node1", v2, start.Add(time.Second)), rejected("r2", "node2", v2, start.Add(2*time.Second)), rejected("r3", "node3", v2, start.Add(3*time.Second))}
		f, _ := a.converge(context.Background(), []target{tg})
		if len(f) != 1 || f[0].NodeFault || !strings.Contains(f[0].Reason, "3 task(s) of the new version failed") {
			t.Fatalf("failures %+v, want the release failed (not a node fault)", f)
		}
	})
}

// Swarm's updater pauses at the node that rejects: the nodes after it may still run the old version. The
// rollout is not rolled back and the error is transient (nothing concluded about the release); once the node
// runs the new version again (Swarm restarted its task), the update is re-issued and converges.
func TestAnUpdatePausedAtAFaultyNodeIsNotRolledBackAndResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := nodeFaultRollout()
		start := time.Now()
		v1 := c.svc.PreviousSpec.TaskTemplate
		c.tasks[1] = task("old2", "node2", v1, swarm.TaskStateRunning, start.Add(-time.Hour))
		c.svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, StartedAt: &start,
			Message: "update paused due to failure or early termination of task rej3a"}
		f, _ := a.converge(context.Background(), []target{tg})
		if len(f) != 1 || !f[0].NodeFault || !strings.Contains(f[0].Reason, "node node3") {
			t.Fatalf("failures %+v, want one node fault naming node3", f)
		}
		res := &Result{}
		err := a.fail(context.Background(), res, []target{tg}, f)
		var nf *NodeFaultError
		if fault.KindOf(err) != fault.Transient || !errors.As(err, &nf) {
			t.Fatalf("error %v (kind %v), want a transient node fault", err, fault.KindOf(err))
		}
		if len(c.updates) != 0 || len(res.RolledBack) != 0 {
			t.Fatalf("%d writes, rolled back %v: a node fault must not roll the release back", len(c.updates), res.RolledBack)
		}

		// The node recovers: Swarm restarted its task on the new spec. The next look re-issues the update.
		c.recovers = true
		c.tasks = append([]swarm.Task{task("new3", "node3", c.svc.Spec.TaskTemplate, swarm.TaskStateRunning, time.Now())}, c.tasks...)
		f, degraded := a.converge(context.Background(), []target{tg})
		if len(f) != 0 || len(degraded) != 0 {
			t.Fatalf("after the node recovered: failures %v, degraded %v", f, degraded)
		}
		if len(c.updates) != 1 || c.updates[0].Spec.TaskTemplate.ForceUpdate != 1 {
			t.Fatalf("%d writes, want one re-issue", len(c.updates))
		}
	})
}

// A rollback counts as done only when every node that should run the service runs the previous version: a
// node whose task was rejected and waits for its restart has no task wanted running, and used to be
// overlooked ("rolled back" while it served nothing).
func TestRolledBackCountsEveryNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := nodeFaultRollout()
		now := time.Now()
		v1 := *c.svc.PreviousSpec
		c.svc.PreviousSpec, c.svc.Spec = &c.svc.Spec, v1
		c.svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateRollbackCompleted, StartedAt: &now}
		c.tasks = []swarm.Task{
			task("back1", "node1", v1.TaskTemplate, swarm.TaskStateRunning, now.Add(time.Second)),
			task("back2", "node2", v1.TaskTemplate, swarm.TaskStateRunning, now.Add(2*time.Second)),
			rejected("back3", "node3", v1.TaskTemplate, now.Add(3*time.Second)),
		}
		done, why, missing := a.rolledBack(context.Background(), tg)
		if done || why != "" || !strings.Contains(missing, "node node3") {
			t.Fatalf("rolled back %v (why %q, missing %q) while node3 runs nothing", done, why, missing)
		}
		c.tasks = append(c.tasks, task("back3b", "node3", v1.TaskTemplate, swarm.TaskStateRunning, now.Add(9*time.Second)))
		if done, _, missing := a.rolledBack(context.Background(), tg); !done {
			t.Fatalf("not rolled back (missing %q) with the previous version on every node", missing)
		}
	})
}

// Swarm's updater can pause at the faulty node before any other node runs the new version: the node had
// rejected the previous version too, so it is still the node's fault (the 3-manager suite saw the agent roll
// back, and Swarm pause the rollback at the same node). A release rejected everywhere is still the release's.
func TestAnUpdatePausedAtAFaultyNodeFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := nodeFaultRollout()
		start := time.Now()
		v1, v2 := c.svc.PreviousSpec.TaskTemplate, c.svc.Spec.TaskTemplate
		c.tasks = []swarm.Task{
			rejected("rej3", "node3", v2, start.Add(time.Second)),
			task("old1", "node1", v1, swarm.TaskStateRunning, start.Add(-time.Hour)),
			task("old2", "node2", v1, swarm.TaskStateRunning, start.Add(-time.Hour)),
			rejected("old3", "node3", v1, start.Add(-time.Minute)),
		}
		c.svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, StartedAt: &start,
			Message: "update paused due to failure or early termination of task rej3"}
		f, _ := a.converge(context.Background(), []target{tg})
		if len(f) != 1 || !f[0].NodeFault || !strings.Contains(f[0].Reason, "node node3") {
			t.Fatalf("failures %+v, want one node fault naming node3", f)
		}
		// The same pause at a node that ran the previous version well: the release's fault.
		c.tasks[3] = task("old3", "node3", v1, swarm.TaskStateShutdown, start.Add(-time.Minute))
		if f, _ := a.converge(context.Background(), []target{tg}); len(f) != 1 || f[0].NodeFault {
			t.Fatalf("failures %+v, want the release failed", f)
		}
	})
}

// Swarm's updater waits for the faulty node's slot for ever (its task rejected and restarted every few
// seconds), so its update stays "updating": the rollout converges on the other nodes all the same.
func TestANodeFaultWhileSwarmSaysUpdating(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, a, tg := nodeFaultRollout()
		start := time.Now()
		c.svc.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateUpdating, StartedAt: &start}
		f, degraded := a.converge(context.Background(), []target{tg})
		if len(f) != 0 || len(degraded) != 1 {
			t.Fatalf("failures %v, degraded %v", f, degraded)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Fatalf("converged after %s, want within the stability window of the other nodes (9 s)", took)
		}
	})
}
