package swarm

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// maxReissues is how many times one rollout re-issues a stalled or wrongly paused Swarm update.
const maxReissues = 2

// stallMargin is how long past the update monitor and delay Swarm's updater may do nothing before the agent
// takes its update for stalled.
const stallMargin = 30 * time.Second

// stalled reports whether Swarm's update of svc has stopped making progress: the update is still "updating"
// (started by this rollout), a task still has to be replaced or to come up, and no task of the service was
// created or changed state for the update's monitor and delay plus stallMargin. Swarm's updater waits
// without a deadline for the task it started on a slot; when the manager that ran the update or the node of
// that task restarts at the wrong moment it can wait for ever (moby/swarmkit#1720, moby/moby#35564). idle is
// how long nothing happened, period how long that must be for a stall.
func stalled(t target, svc swarm.Service, tasks []swarm.Task, now time.Time) (idle, period time.Duration, ok bool) {
	us := svc.UpdateStatus
	if !t.updated || us == nil || us.State != swarm.UpdateStateUpdating {
		return 0, 0, false
	}
	want := taskJSON(svc.Spec.TaskTemplate)
	remaining := false
	for _, task := range tasks {
		if task.DesiredState == swarm.TaskStateRunning && (taskJSON(task.Spec) != want || task.Status.State != swarm.TaskStateRunning) {
			remaining = true
		}
	}
	if !remaining {
		return 0, 0, false
	}
	idle, period = quiet(t, svc, tasks, now)
	return idle, period, idle >= period
}

// quiet says for how long no task of svc was created or changed state, and how long that must be (the
// update's monitor and delay plus stallMargin) before the agent takes Swarm's updater for stuck.
func quiet(t target, svc swarm.Service, tasks []swarm.Task, now time.Time) (idle, period time.Duration) {
	us := svc.UpdateStatus
	last := t.since
	if us.StartedAt != nil && us.StartedAt.After(last) {
		last = *us.StartedAt
	}
	if t.reissuedAt.After(last) {
		last = t.reissuedAt
	}
	for _, task := range tasks {
		if task.CreatedAt.After(last) {
			last = task.CreatedAt
		}
		if task.Status.Timestamp.After(last) {
			last = task.Status.Timestamp
		}
	}
	period = stallMargin
	if u := svc.Spec.UpdateConfig; u != nil {
		period += u.Delay
	}
	if u := svc.Spec.UpdateConfig; u != nil && u.Monitor > 0 {
		period += u.Monitor
	} else {
		period += 5 * time.Second
	}
	return now.Sub(last), period
}

// reissuable says why Swarm's update of t should be re-issued rather than waited for or failed (empty: it
// should not), and by how much that extends the deadline: the update stalled (see stalled), or Swarm paused it
// for a task of this rollout that ended without failing (shut down or orphaned: its node's engine stopped, as
// when a manager restarts mid-update), which says nothing about the release, or for a task a node rejected
// when that node runs the new version now (it could not run tasks, and recovered). A task that failed, was rejected
// or exited still fails the rollout at once.
func (a *Applier) reissuable(t target, svc swarm.Service, tasks []swarm.Task, done bool, failure string) (why string, extra time.Duration) {
	if us := svc.UpdateStatus; t.updated && us != nil && us.State == swarm.UpdateStatePaused && (us.StartedAt == nil || !us.StartedAt.Before(t.since)) {
		task, ok := pausedFor(us.Message, tasks)
		if ok && !taskFailed(task, svc.Spec.Mode) && task.Status.State != swarm.TaskStateRunning {
			return "was paused for task " + task.ID + ", which did not fail (" + taskReason(task) + ")", 0
		}
		if ok && task.Status.State == swarm.TaskStateRejected && runsOn(tasks, task.NodeID, taskJSON(svc.Spec.TaskTemplate)) {
			// The node rejected the task (it could not run tasks at all: see nodeFaults) and runs the new
			// version now: it recovered, and the update can go on.
			return "was paused for task " + task.ID + ", rejected by a node that runs the new version now (" + taskReason(task) + ")", 0
		}
		return "", 0
	}
	if done || failure != "" {
		return "", 0
	}
	if idle, period, ok := stalled(t, svc, tasks, a.Now()); ok {
		return "stalled (no task created or changed for " + idle.Round(time.Second).String() + ")", period
	}
	return "", 0
}

// runsOn reports whether a task of the spec want runs on node.
func runsOn(tasks []swarm.Task, node, want string) bool {
	for _, t := range tasks {
		if t.NodeID == node && t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning && taskJSON(t.Spec) == want {
			return true
		}
	}
	return false
}

// pausedFor finds the task Swarm names in the message of a paused update ("update paused due to failure or
// early termination of task <id>").
func pausedFor(message string, tasks []swarm.Task) (swarm.Task, bool) {
	i := strings.LastIndex(message, "task ")
	if i < 0 {
		return swarm.Task{}, false
	}
	id := strings.TrimSpace(message[i+len("task "):])
	for _, t := range tasks {
		if t.ID == id {
			return t, true
		}
	}
	return swarm.Task{}, false
}

// reissue writes the service's spec again with TaskTemplate.ForceUpdate raised, as operators do with a
// stalled update (`docker service update --force`): Swarm starts a new update, and its updater with it. The
// spec Swarm would roll back to is the re-issued one from then on, so t keeps the spec from before the
// rollout for the agent's own rollback.
func (a *Applier) reissue(ctx context.Context, t *target, svc swarm.Service, tasks []swarm.Task, why string) error {
	spec := svc.Spec
	spec.TaskTemplate.ForceUpdate++
	if _, err := a.Client.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{Version: svc.Version, Spec: spec, QueryRegistry: false}); err != nil {
		return fmt.Errorf("re-issue the update of %s: %w", t.name, err)
	}
	if t.previous == nil && svc.PreviousSpec != nil {
		p := *svc.PreviousSpec
		t.previous = &p
	}
	t.reissues++
	t.reissuedAt = a.Now()
	a.Log.Warn("Swarm's update "+why+": re-issued it (force update)", "service", t.name, "reissue", t.reissues, "tasks", describe(tasks))
	return nil
}

// sameButForced reports whether two specs differ in ForceUpdate alone.
func sameButForced(a, b swarm.ServiceSpec) bool {
	a.TaskTemplate.ForceUpdate, b.TaskTemplate.ForceUpdate = 0, 0
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
