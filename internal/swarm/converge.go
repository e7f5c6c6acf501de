package swarm

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// target is a service the apply created or updated.
type target struct {
	id, name string
	// updated: the apply updated the service (it has a previous spec); created: the apply created it.
	updated, created bool
	// since is when the rollout started: tasks and update states older than that are not its own.
	since time.Time
	// reissues counts the re-issues of a stalled or paused Swarm update (reissuedAt the last); previous is the spec
	// from before the rollout once a re-issue made Swarm's own previous spec the new one.
	reissues   int
	reissuedAt time.Time
	previous   *swarm.ServiceSpec
}

// converge waits until every target runs its new spec with every task running (Swarm reports a task with a
// healthcheck as running only once it is healthy), or fails them: a paused update, a Swarm auto-rollback, too
// many failed tasks of the new version, or the timeout. Nodes that cannot run tasks at all while the new
// version runs on the others (see nodeFaults) do not fail a rollout: a service that runs on every other node
// converges and is returned in degraded (with those nodes), and a failure they cause is marked NodeFault. A Swarm update that stalls, or that Swarm paused for a
// task that ended without failing (its node stopped), is re-issued instead (see reissuable), at most
// maxReissues times, and the timeout grows by the time it took to tell a stall. It returns the failures, none
// on success.
func (a *Applier) converge(ctx context.Context, targets []target) (failures []Failure, degraded []string) {
	deadline := a.Now().Add(a.Timeout)
	pending := map[string]target{}
	for _, t := range targets {
		pending[t.id] = t
	}
	faults := map[string]string{} // the node fault each service's last check saw
	told := a.Now()               // when the wait was last logged
	var lastErr error
	var last *round
	for len(pending) > 0 {
		// The next look: after Poll, or as soon as a service that waits only for its tasks' stability window
		// has them all past it (a poll period later would add up to Poll to every rollout).
		wait := a.Poll
		r, err := a.observe(ctx, sortedIDs(pending))
		if err != nil {
			lastErr = err
		} else {
			last = r
			for _, id := range sortedIDs(pending) {
				t := pending[id]
				svc, ok := r.services[id]
				if !ok {
					failures = append(failures, Failure{Service: t.name, Reason: "the service disappeared during the rollout"})
					delete(pending, id)
					continue
				}
				done, reason, stableAt, nodeFault := a.check(t, svc, r.tasks[id], r.nodes)
				faults[id] = nodeFault
				if why, extra := a.reissuable(t, svc, r.tasks[id], done, reason); why != "" && t.reissues < maxReissues {
					if err := a.reissue(ctx, &t, svc, r.tasks[id], why); err != nil {
						a.Log.Error("the re-issue of Swarm's update failed", "service", t.name, "err", err)
					} else {
						// The time it took to tell that Swarm's updater stood still does not count
						// against the timeout.
						deadline = deadline.Add(extra)
						pending[id] = t
						for i := range targets { // the rollback needs the spec from before the rollout
							if targets[i].id == id {
								targets[i] = t
							}
						}
						continue
					}
				}
				if !stableAt.IsZero() {
					wait = min(wait, max(stableAt.Sub(a.Now()), time.Millisecond))
				}
				down := ""
				if done && nodeFault == "" {
					down = downNodes(svc, r.tasks[id], r.nodes, t.since)
				}
				switch {
				case reason != "":
					failures = append(failures, Failure{Service: t.name, Reason: reason, NodeFault: nodeFault != ""})
					delete(pending, id)
				case done && nodeFault != "":
					a.Log.Warn("service converged on every node but those that cannot run tasks (a fault of the node, not of the release)", "service", t.name, "nodes", nodeFault)
					degraded = append(degraded, t.name+": "+nodeFault)
					delete(pending, id)
				case done && down != "":
					// Swarm lists a node of a global service as down (its engine stopped, or it does not
					// reach the managers): the release runs everywhere else, and Swarm starts it there once
					// the node is ready again. Said, not waited for: how long a node stays down is not the
					// release's doing.
					a.Log.Warn("service converged on every node but those Swarm lists as down", "service", t.name, "nodes", down)
					degraded = append(degraded, t.name+": "+down)
					delete(pending, id)
				case done:
					a.Log.Info("service converged", "service", t.name)
					delete(pending, id)
				}
			}
		}
		if len(pending) == 0 {
			break
		}
		if last != nil && a.Now().Sub(told) >= waitLog {
			told = a.Now()
			for _, id := range sortedIDs(pending) {
				a.Log.Info("waiting for the rollout", "service", pending[id].name, "state", progress(last.services[id], last.tasks[id], last.nodes))
			}
		}
		if a.Now().After(deadline) {
			for _, id := range sortedIDs(pending) {
				state := "the engine did not answer"
				if last != nil {
					state = describe(last.tasks[id])
				}
				if lastErr != nil {
					state += " (last engine error: " + lastErr.Error() + ")"
				}
				if faults[id] != "" {
					state += "; it runs on every other node: " + faults[id]
				}
				failures = append(failures, Failure{Service: pending[id].name, Reason: fmt.Sprintf("did not converge within %s: %s", a.Timeout, state), NodeFault: faults[id] != ""})
			}
			break
		}
		select {
		case <-ctx.Done():
			for _, id := range sortedIDs(pending) {
				failures = append(failures, Failure{Service: pending[id].name, Reason: "interrupted: " + ctx.Err().Error()})
			}
			return failures, degraded
		case <-time.After(wait):
		}
	}
	sort.Slice(failures, func(i, j int) bool { return failures[i].Service < failures[j].Service })
	sort.Strings(degraded)
	return failures, degraded
}

// waitLog is how often a rollout that goes on says what it waits for.
const waitLog = 15 * time.Second

// progress says where a rollout stands, for the log: Swarm's update state, and per node (hostname) the newest
// task wanted running, or else the newest task: of the new version or not, and its state.
func progress(svc swarm.Service, tasks []swarm.Task, nodes map[string]swarm.Node) string {
	want := taskJSON(svc.Spec.TaskTemplate)
	newest := map[string]swarm.Task{}
	for _, t := range tasks { // newest first
		cur, seen := newest[t.NodeID]
		if !seen || (cur.DesiredState != swarm.TaskStateRunning && t.DesiredState == swarm.TaskStateRunning) {
			newest[t.NodeID] = t
		}
	}
	var parts []string
	for id, t := range newest {
		name := nodeName(id, nodes)
		if n, ok := nodes[id]; ok {
			name += " (" + string(n.Status.State) + ")"
		}
		version := "previous"
		if taskJSON(t.Spec) == want {
			version = "new"
		}
		parts = append(parts, name+": "+version+" "+taskReason(t)+", desired "+string(t.DesiredState))
	}
	sort.Strings(parts)
	state := "none"
	if us := svc.UpdateStatus; us != nil {
		state = string(us.State)
	}
	return "update " + state + "; " + strings.Join(parts, "; ")
}

// round is one look at the services being rolled out: three API calls, whatever their number.
type round struct {
	services map[string]swarm.Service
	tasks    map[string][]swarm.Task
	nodes    map[string]swarm.Node
}

func (a *Applier) observe(ctx context.Context, ids []string) (*round, error) {
	svcs, err := a.Client.ServiceList(ctx, client.ServiceListOptions{Filters: make(client.Filters).Add("id", ids...)})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	tasks, err := a.Client.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", ids...)})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	nodes, err := a.Client.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	r := &round{services: map[string]swarm.Service{}, tasks: map[string][]swarm.Task{}, nodes: nodesByID(nodes.Items)}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for _, s := range svcs.Items {
		if want[s.ID] { // the id filter matches prefixes
			r.services[s.ID] = s
		}
	}
	for _, t := range tasks.Items {
		r.tasks[t.ServiceID] = append(r.tasks[t.ServiceID], t)
	}
	for id := range r.tasks {
		ts := r.tasks[id]
		sort.Slice(ts, func(i, j int) bool { return ts[i].CreatedAt.After(ts[j].CreatedAt) })
	}
	return r, nil
}

// check judges one service from one round: converged, failed (with the reason), or neither yet. stableAt,
// when not zero, is when the service converges unless something changes: every task it needs runs, and the
// last of them has run for the stability window then. nodeFault, when set, names nodes that cannot run
// tasks at all while the new version runs on others (see nodeFaults): a failure with it is a fault of those
// nodes, not of the release, and done with it means the release runs on every node but those.
func (a *Applier) check(t target, svc swarm.Service, tasks []swarm.Task, nodes map[string]swarm.Node) (done bool, failure string, stableAt time.Time, nodeFault string) {
	since := t.since
	want := taskJSON(svc.Spec.TaskTemplate)
	// A task counts as running once it has stayed up for the stability window: without a healthcheck the
	// engine reports a task running before it notices the process exited at once (Swarm itself judges an
	// update only after its monitor period). With a healthcheck, running already means healthy.
	window := stability(svc.Spec)
	stable := a.Now().Add(-window)
	faulty, why := nodeFaults(tasks, want, since)
	failed, running, warming, desired := 0, 0, 0, 0
	var lastErr string
	up := map[string]bool{} // nodes where a task of the new version runs
	for _, task := range tasks {
		if faulty[task.NodeID] {
			continue // a node that cannot run tasks says nothing about the release
		}
		if taskJSON(task.Spec) != want {
			if task.DesiredState == swarm.TaskStateRunning {
				desired++ // an old task still has to be replaced
			}
			continue
		}
		if task.CreatedAt.After(since) && taskFailed(task, svc.Spec.Mode) {
			failed++
			if lastErr == "" {
				lastErr = taskReason(task) // tasks are newest first
			}
		}
		if task.DesiredState == swarm.TaskStateRunning {
			desired++
			if task.Status.State == swarm.TaskStateRunning {
				up[task.NodeID] = true
				if !task.Status.Timestamp.After(stable) {
					running++
				} else {
					warming++ // running, not for the window yet
					if at := task.Status.Timestamp.Add(window); at.After(stableAt) {
						stableAt = at
					}
				}
			}
		}
	}
	if len(faulty) > 0 {
		nodeFault = describeNodes(faulty, why, nodes)
	}
	if us := svc.UpdateStatus; us != nil && (us.StartedAt == nil || !us.StartedAt.Before(since)) {
		switch us.State {
		case swarm.UpdateStatePaused:
			task, ok := pausedFor(us.Message, tasks)
			if ok && faulty[task.NodeID] {
				// Swarm's updater stopped at a node that cannot run tasks: the nodes after it in its order
				// may still run the old version.
				return false, "update paused by Swarm at a node that cannot run tasks: " + nodeFault, time.Time{}, nodeFault
			}
			if ok {
				return false, "update paused by Swarm: " + us.Message + " (" + taskReason(task) + ")", time.Time{}, ""
			}
			return false, "update paused by Swarm: " + us.Message + taskError(tasks, svc, since), time.Time{}, ""
		case swarm.UpdateStateRollbackStarted, swarm.UpdateStateRollbackPaused, swarm.UpdateStateRollbackCompleted:
			return false, "Swarm rolled the update back (" + string(us.State) + "): " + us.Message + taskError(tasks, svc, since), time.Time{}, ""
		}
	}
	if failed >= failureLimit(svc.Spec, a.MaxTaskFailures) {
		return false, fmt.Sprintf("%d task(s) of the new version failed: %s", failed, lastErr), time.Time{}, ""
	}
	// While Swarm's updater says "updating" the rollout waits for it, unless it stays so with nothing left
	// to do (every task replaced, nothing created or changed for the monitor and delay plus stallMargin):
	// after a manager restart it can (moby/swarmkit#1720). The counts below then decide: a replicated slot
	// between its old task and its new one has neither running, and a global service must run on every node
	// it ever had a task on (a node between the two has no task wanted running).
	// With a faulty node Swarm's updater waits for that node's slot for ever (its task rejected, restarted,
	// rejected): the counts decide at once.
	updating := t.updated && svc.UpdateStatus != nil && svc.UpdateStatus.State == swarm.UpdateStateUpdating
	if updating && len(faulty) == 0 {
		if idle, period := quiet(t, svc, tasks, a.Now()); idle < period {
			return false, "", time.Time{}, nodeFault
		}
	}
	n := replicas(svc.Spec.Mode)
	if n == 0 && updating {
		return false, "", time.Time{}, nodeFault
	}
	if n < 0 {
		// Global: one task per node that can take one. Swarm keeps no task wanted running on a node
		// whose task failed until its restart delay passes, so counting the tasks wanted running is not
		// enough: every ready, active node the service has tasks on (and that can run tasks) must run it.
		from := since
		if updating {
			from = time.Time{}
		}
		for node := range eligible(tasks, nodes, from) {
			if !up[node] && !faulty[node] {
				return false, "", time.Time{}, nodeFault
			}
		}
	}
	all := running + warming
	switch {
	case n == 0: // a job: it runs to completion on its own schedule
		return true, "", time.Time{}, ""
	case n > 0:
		if warming > 0 && all == n && desired == all {
			return false, "", stableAt, nodeFault
		}
		return running == n && desired == running, "", time.Time{}, nodeFault
	default: // global
		if warming > 0 && desired == all {
			return false, "", stableAt, nodeFault
		}
		return running > 0 && desired == running, "", time.Time{}, nodeFault
	}
}

// nodeFaults finds the nodes that cannot run tasks: a task of the new version (created since) was rejected
// there (the engine could not start it: a network it cannot join, a bind source it lacks), none of the new
// version runs there, and either it runs on another node or that node rejected a task of another version
// too (Swarm's updater can pause at the faulty node before any other node has the new version). Such a node
// would reject the previous version as well: its fault is not the release's. A task that started and failed (its process exited) is never a node
// fault, so a release that crashes fails on the other nodes all the same. why holds each node's newest
// rejection.
func nodeFaults(tasks []swarm.Task, want string, since time.Time) (faulty map[string]bool, why map[string]string) {
	rejected, running, before := map[string]string{}, map[string]bool{}, map[string]bool{}
	for _, task := range tasks { // newest first
		if task.NodeID == "" {
			continue
		}
		if taskJSON(task.Spec) != want {
			if task.Status.State == swarm.TaskStateRejected {
				before[task.NodeID] = true // it rejected another version too
			}
			continue
		}
		if task.Status.State == swarm.TaskStateRejected && task.CreatedAt.After(since) {
			if _, ok := rejected[task.NodeID]; !ok {
				rejected[task.NodeID] = taskReason(task)
			}
		}
		if task.DesiredState == swarm.TaskStateRunning && task.Status.State == swarm.TaskStateRunning {
			running[task.NodeID] = true
		}
	}
	for node := range rejected {
		if running[node] || (len(running) == 0 && !before[node]) {
			delete(rejected, node)
		}
	}
	if len(rejected) == 0 {
		return nil, nil
	}
	faulty = map[string]bool{}
	for node := range rejected {
		faulty[node] = true
	}
	return faulty, rejected
}

// eligible is the set of nodes that should run a task of a global service: those with a task created since
// the rollout began or wanted running, and ready and active (a down, drained or paused node gets no new
// task). Without the node list every such node counts.
func eligible(tasks []swarm.Task, nodes map[string]swarm.Node, since time.Time) map[string]bool {
	out := map[string]bool{}
	for node := range placed(tasks, since) {
		if nodes != nil {
			n, ok := nodes[node]
			if !ok || n.Status.State != swarm.NodeStateReady || n.Spec.Availability != swarm.NodeAvailabilityActive {
				continue
			}
		}
		out[node] = true
	}
	return out
}

// placed is the set of nodes a service has a task on that was created since the rollout began or is wanted
// running: the nodes Swarm means it to run on.
func placed(tasks []swarm.Task, since time.Time) map[string]bool {
	out := map[string]bool{}
	for _, task := range tasks {
		if task.NodeID != "" && (task.CreatedAt.After(since) || task.DesiredState == swarm.TaskStateRunning) {
			out[task.NodeID] = true
		}
	}
	return out
}

// downNodes names the nodes a global service has a task on (created since the rollout began, or wanted
// running) that Swarm lists as not ready while they are active (a drained or paused node is the operator's
// choice): "node <hostname>: down (Swarm starts the release there once the node is ready)", in a stable order.
// Empty for a replicated service (Swarm places its tasks elsewhere) or without the node list.
func downNodes(svc swarm.Service, tasks []swarm.Task, nodes map[string]swarm.Node, since time.Time) string {
	if svc.Spec.Mode.Global == nil || nodes == nil {
		return ""
	}
	var parts []string
	for node := range placed(tasks, since) {
		if n, ok := nodes[node]; ok && n.Status.State != swarm.NodeStateReady && n.Spec.Availability == swarm.NodeAvailabilityActive {
			parts = append(parts, "node "+nodeName(node, nodes)+": "+string(n.Status.State)+" (Swarm starts the release there once the node is ready)")
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// describeNodes names the faulty nodes (hostnames where known) with their newest rejection, in a stable
// order.
func describeNodes(faulty map[string]bool, why map[string]string, nodes map[string]swarm.Node) string {
	var parts []string
	for id := range faulty {
		parts = append(parts, "node "+nodeName(id, nodes)+": "+why[id])
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// nodeName is a node's hostname, or its ID when the node list does not know it.
func nodeName(id string, nodes map[string]swarm.Node) string {
	if n, ok := nodes[id]; ok && n.Description.Hostname != "" {
		return n.Description.Hostname
	}
	return id
}

// nodesByID indexes a node list by node ID.
func nodesByID(items []swarm.Node) map[string]swarm.Node {
	out := make(map[string]swarm.Node, len(items))
	for _, n := range items {
		out[n.ID] = n
	}
	return out
}

// stability is how long a task must have been running to count: the update monitor (Swarm's default 5s)
// for a service without a healthcheck, nothing for one with a healthcheck.
func stability(spec swarm.ServiceSpec) time.Duration {
	if cs := spec.TaskTemplate.ContainerSpec; cs != nil && cs.Healthcheck != nil && len(cs.Healthcheck.Test) > 0 && cs.Healthcheck.Test[0] != "NONE" {
		return 0
	}
	if u := spec.UpdateConfig; u != nil && u.Monitor > 0 {
		return u.Monitor
	}
	return 5 * time.Second
}

// describe summarizes a service's tasks (newest first) for a timeout message.
func describe(tasks []swarm.Task) string {
	for _, t := range tasks {
		if t.DesiredState == swarm.TaskStateRunning && t.Status.State != swarm.TaskStateRunning {
			return "task " + t.ID[:min(12, len(t.ID))] + " is " + taskReason(t)
		}
	}
	if len(tasks) > 0 {
		return "last task " + taskReason(tasks[0])
	}
	return "no task was scheduled"
}

// taskError names the newest failed task of the new version.
func taskError(tasks []swarm.Task, svc swarm.Service, since time.Time) string {
	for _, t := range tasks {
		if t.CreatedAt.After(since) && taskFailed(t, svc.Spec.Mode) {
			return "; task " + taskReason(t)
		}
	}
	return ""
}

// rollback puts every failed service back where it was and waits for it: an updated service on its previous
// spec (unless Swarm rolled it back already), a created one removed (it never ran well: nothing to go back
// to). A service counts as rolled back only once every task of the previous version runs (and, with a
// healthcheck, is healthy) again, within the timeout plus a minute; one that does not is reported as such.
func (a *Applier) rollback(ctx context.Context, targets []target, failures []Failure) rollbackResult {
	failed := map[string]bool{}
	for _, f := range failures {
		failed[f.Service] = true
	}
	var out rollbackResult
	var waiting []target
	for _, t := range targets {
		if !failed[t.name] {
			continue
		}
		if t.created {
			if _, err := a.Client.ServiceRemove(ctx, t.id, client.ServiceRemoveOptions{}); err != nil {
				a.Log.Error("rollback: remove the new service", "service", t.name, "err", err)
				out.notDone = append(out.notDone, t.name+" (could not be removed: "+err.Error()+")")
				continue
			}
			a.Log.Warn("new service removed: it did not converge", "service", t.name)
			out.removed = append(out.removed, t.name)
			continue
		}
		if !t.updated {
			continue
		}
		r, err := a.Client.ServiceInspect(ctx, t.id, client.ServiceInspectOptions{})
		if err != nil {
			a.Log.Error("rollback: inspect", "service", t.name, "err", err)
			out.notDone = append(out.notDone, t.name+" (could not be inspected: "+err.Error()+")")
			continue
		}
		svc := r.Service
		if t.previous != nil {
			// The update was re-issued: Swarm's previous spec is the new version, so write the one from
			// before the rollout.
			if _, err := a.Client.ServiceUpdate(ctx, t.id, client.ServiceUpdateOptions{Version: svc.Version, Spec: *t.previous, QueryRegistry: false}); err != nil {
				a.Log.Error("rollback failed", "service", t.name, "err", err)
				out.notDone = append(out.notDone, t.name+" (the rollback was refused: "+err.Error()+")")
				continue
			}
			a.Log.Warn("service rolled back (to the spec from before the re-issued update)", "service", t.name)
			waiting = append(waiting, t)
			continue
		}
		if us := svc.UpdateStatus; us != nil && (us.State == swarm.UpdateStateRollbackStarted || us.State == swarm.UpdateStateRollbackCompleted) {
			waiting = append(waiting, t)
			continue
		}
		if svc.PreviousSpec == nil {
			continue
		}
		if sameButForced(svc.Spec, *svc.PreviousSpec) {
			// Another agent re-issued this update: Swarm's previous spec is the new version itself.
			a.Log.Error("rollback: the previous spec is the re-issued update itself", "service", t.name)
			out.notDone = append(out.notDone, t.name+" (its previous spec is the re-issued update of another agent: roll back with agent rollback)")
			continue
		}
		if _, err := a.Client.ServiceUpdate(ctx, t.id, client.ServiceUpdateOptions{
			Version: svc.Version, Spec: svc.Spec, Rollback: "previous", QueryRegistry: false,
		}); err != nil {
			a.Log.Error("rollback failed", "service", t.name, "err", err)
			out.notDone = append(out.notDone, t.name+" (the rollback was refused: "+err.Error()+")")
			continue
		}
		a.Log.Warn("service rolled back", "service", t.name)
		waiting = append(waiting, t)
	}
	// Wait for the previous version to run again: the rollout's timeout may be spent already, so the
	// rollback gets a budget of its own.
	deadline := a.Now().Add(a.Timeout + time.Minute)
	for _, t := range waiting {
		done, why, missing := false, "", ""
		for !done && a.Now().Before(deadline) && ctx.Err() == nil {
			if done, why, missing = a.rolledBack(ctx, t); done || why != "" {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(a.Poll):
			}
		}
		switch {
		case done:
			out.rolledBack = append(out.rolledBack, t.name)
		case why != "":
			out.notDone = append(out.notDone, t.name+" ("+why+")")
		default:
			msg := "the previous version is not running again after " + (a.Timeout + time.Minute).String()
			if missing != "" {
				msg += ": " + missing
			}
			out.notDone = append(out.notDone, t.name+" ("+msg+")")
		}
	}
	sort.Strings(out.rolledBack)
	sort.Strings(out.removed)
	sort.Strings(out.notDone)
	return out
}

// rollbackResult says what a rollback achieved.
type rollbackResult struct {
	// rolledBack run their previous version again; removed were new and are gone; notDone did not get
	// back, each with the reason.
	rolledBack, removed, notDone []string
}

// rolledBack reports whether a service's rollback finished: every task runs the spec the service has now
// (Swarm's "rollback completed" alone is not enough: its tasks may still be starting), and for a global service
// on every node that should run one (a node whose task was rejected and waits for its restart has no task
// wanted running: counting those would call a node that serves nothing rolled back). why is set when the
// rollback cannot finish (Swarm paused it); missing names a node that runs no task yet.
func (a *Applier) rolledBack(ctx context.Context, t target) (done bool, why, missing string) {
	r, err := a.Client.ServiceInspect(ctx, t.id, client.ServiceInspectOptions{})
	if err != nil {
		return false, "", ""
	}
	svc := r.Service
	if us := svc.UpdateStatus; us != nil && us.State == swarm.UpdateStateRollbackPaused {
		a.Log.Error("Swarm paused the rollback", "service", t.name, "message", us.Message)
		return false, "Swarm paused the rollback: " + us.Message, ""
	}
	if us := svc.UpdateStatus; us != nil && us.State != swarm.UpdateStateRollbackCompleted && us.State != swarm.UpdateStateCompleted {
		return false, "", ""
	}
	tasks, err := a.Client.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", svc.ID)})
	if err != nil {
		return false, "", ""
	}
	want, running, desired := taskJSON(svc.Spec.TaskTemplate), 0, 0
	up := map[string]bool{}
	for _, task := range tasks.Items {
		if task.DesiredState != swarm.TaskStateRunning {
			continue
		}
		desired++
		if taskJSON(task.Spec) == want && task.Status.State == swarm.TaskStateRunning {
			running++
			up[task.NodeID] = true
		}
	}
	n := replicas(svc.Spec.Mode)
	if n < 0 {
		nodes, err := a.Client.NodeList(ctx, client.NodeListOptions{})
		if err != nil {
			return false, "", ""
		}
		byID := nodesByID(nodes.Items)
		var none []string
		for node := range eligible(tasks.Items, byID, t.since) {
			if !up[node] {
				none = append(none, "node "+nodeName(node, byID)+": runs no task of the previous version")
			}
		}
		if len(none) > 0 {
			sort.Strings(none)
			return false, "", strings.Join(none, "; ")
		}
	}
	return desired == running && (n < 0 || running == n), "", ""
}

// taskJSON is what identifies the version of a task's spec. The engine shows tasks with fewer fields than
// services (no restart policy, runtime or stop grace period), and network attachments with details of its
// own, so those are left out; everything else of the task template is compared.
func taskJSON(t swarm.TaskSpec) string {
	t.RestartPolicy = nil
	t.Runtime = ""
	t.Networks = nil
	if t.ContainerSpec != nil {
		c := *t.ContainerSpec
		c.StopGracePeriod = nil
		t.ContainerSpec = &c
	}
	b, _ := json.Marshal(t)
	return string(b)
}

func taskFailed(t swarm.Task, mode swarm.ServiceMode) bool {
	switch t.Status.State {
	case swarm.TaskStateFailed, swarm.TaskStateRejected:
		return true
	case swarm.TaskStateComplete:
		// A service (not a job) whose process exits has failed too.
		return mode.ReplicatedJob == nil && mode.GlobalJob == nil
	}
	return false
}

func taskReason(t swarm.Task) string {
	s := string(t.Status.State)
	if t.Status.Err != "" {
		s += ": " + t.Status.Err
	} else if t.Status.Message != "" {
		s += ": " + t.Status.Message
	}
	if t.Status.ContainerStatus != nil && t.Status.ContainerStatus.ExitCode != 0 {
		s += fmt.Sprintf(" (exit code %d)", t.Status.ContainerStatus.ExitCode)
	}
	return s
}

// failureLimit is how many failed tasks of the new version fail a rollout: max, or fewer when the restart
// policy gives up sooner (condition none: the first failure; max_attempts n: n+1 failures), since then Swarm
// starts no more tasks and waiting would only run into the timeout.
func failureLimit(spec swarm.ServiceSpec, max int) int {
	rp := spec.TaskTemplate.RestartPolicy
	switch {
	case rp == nil:
		return max
	case rp.Condition == swarm.RestartPolicyConditionNone:
		return 1
	case rp.MaxAttempts != nil && *rp.MaxAttempts > 0 && int(*rp.MaxAttempts)+1 < max:
		return int(*rp.MaxAttempts) + 1
	}
	return max
}

// replicas is the wanted number of running tasks, or -1 when it depends on the nodes (global).
func replicas(m swarm.ServiceMode) int {
	switch {
	case m.Replicated != nil && m.Replicated.Replicas != nil:
		return int(*m.Replicated.Replicas)
	case m.Replicated != nil:
		return 1
	case m.ReplicatedJob != nil, m.GlobalJob != nil:
		return 0
	}
	return -1
}

func sortedIDs(m map[string]target) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
