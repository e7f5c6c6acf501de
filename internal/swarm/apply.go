package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/stack"
)

// Applier applies plans. The zero value is not usable: fill Client and Log; the rest have defaults.
type Applier struct {
	Client Client
	Log    *slog.Logger
	// Timeout bounds the wait for convergence (default 5m).
	Timeout time.Duration
	// Poll is the interval between convergence checks (default 500ms).
	Poll time.Duration
	// MaxTaskFailures is how many failed tasks of the new version fail a rollout (default 3). An update that
	// Swarm pauses fails at once.
	MaxTaskFailures int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Result says what an apply did.
type Result struct {
	Plan     *plan.Plan
	Failures []Failure
	// RolledBack run their previous version again (its tasks running and healthy); Removed were created by
	// this apply, did not converge and are gone; NotRolledBack did not get back, each with the reason.
	RolledBack, Removed, NotRolledBack []string
	// Degraded converged on every node but nodes that cannot run tasks at all (each "service: node …: why"):
	// a fault of those nodes, not of the release, which Swarm places there once they can.
	Degraded []string
}

// Failure is one service that did not converge.
type Failure struct {
	Service string `json:"service"`
	Reason  string `json:"reason"`
	// NodeFault: the service runs on the other nodes; nodes that cannot run tasks at all held it up.
	NodeFault bool `json:"node_fault,omitempty"`
}

// NodeFaultError is a rollout held up only by nodes that cannot run tasks at all (their engine rejects every
// task: an overlay network it cannot join, a bind source it lacks) while the new version runs on the
// others. Nothing is rolled back (those nodes would reject the previous version too) and nothing is
// concluded about the release: the error is transient, and the next cycle resumes the rollout.
type NodeFaultError struct {
	Failures []Failure
}

func (e *NodeFaultError) Error() string {
	parts := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		parts[i] = f.Service + ": " + f.Reason
	}
	return "rollout held up by nodes that cannot run tasks (a fault of the nodes, not of the release; not rolled back, resumed once they can): " + strings.Join(parts, "; ")
}

// RolloutError is returned when services did not converge; it says which run their previous version again.
type RolloutError struct {
	Failures                           []Failure
	RolledBack, Removed, NotRolledBack []string
}

func (e *RolloutError) Error() string {
	parts := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		parts[i] = f.Service + ": " + f.Reason
	}
	msg := "rollout failed: " + strings.Join(parts, "; ")
	if len(e.RolledBack) > 0 {
		msg += "; rolled back (the previous version runs again): " + strings.Join(e.RolledBack, ", ")
	}
	if len(e.Removed) > 0 {
		msg += "; removed (new, never converged): " + strings.Join(e.Removed, ", ")
	}
	if len(e.NotRolledBack) > 0 {
		msg += "; NOT rolled back: " + strings.Join(e.NotRolledBack, ", ")
	}
	return msg
}

// fail rolls the failed targets back, records what happened in res, and returns the rollout error. A rollout
// interrupted (the agent stops, or lost its lease) did not fail: it is left as it is, to be resumed by the
// next run (which waits for an update in flight), and the error is transient.
func (a *Applier) fail(ctx context.Context, res *Result, targets []target, failures []Failure) error {
	if err := ctx.Err(); err != nil {
		return fault.TransientErr(fmt.Errorf("rollout interrupted (%w): the next run resumes it", err))
	}
	nodeFaults := 0
	for _, f := range failures {
		if f.NodeFault {
			nodeFaults++
		}
	}
	if nodeFaults == len(failures) {
		res.Failures = failures
		a.Log.Error("rollout held up by nodes that cannot run tasks: not rolled back", "failures", len(failures))
		return fault.TransientErr(&NodeFaultError{Failures: failures})
	}
	rb := a.rollback(ctx, targets, failures)
	res.Failures, res.RolledBack, res.Removed, res.NotRolledBack = failures, rb.rolledBack, rb.removed, rb.notDone
	return fault.RolloutErr(&RolloutError{Failures: failures, RolledBack: rb.rolledBack, Removed: rb.removed, NotRolledBack: rb.notDone})
}

func (a *Applier) defaults() {
	if a.Timeout == 0 {
		a.Timeout = 5 * time.Minute
	}
	if a.Poll == 0 {
		a.Poll = 500 * time.Millisecond
	}
	if a.MaxTaskFailures == 0 {
		a.MaxTaskFailures = 3
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Log == nil {
		a.Log = slog.New(slog.DiscardHandler)
	}
}

// Apply makes the swarm match the plan: networks, secrets and configs first, then services, then it waits
// for every created or configured service to converge. Only after that are deleted services removed and
// superseded networks, secrets and configs pruned. A service that does not converge is rolled back (unless
// Swarm did it already) and the error is a *RolloutError classified fault.Rollout. A plan without changes
// makes no write call.
func (a *Applier) Apply(ctx context.Context, p *plan.Plan) (*Result, error) {
	a.defaults()
	res := &Result{Plan: p}
	inflight := inflight(p)
	if !p.Writes() {
		if len(inflight) == 0 {
			return res, nil
		}
		// Nothing to write, but an update started earlier (by an agent that was stopped mid-rollout, say)
		// is still rolling: wait for it like for one of ours.
		failures, degraded := a.converge(ctx, inflight)
		res.Degraded = degraded
		if len(failures) > 0 {
			return res, a.fail(ctx, res, inflight, failures)
		}
		return res, nil
	}
	for _, c := range p.Of(stack.KindNetwork, plan.Configured) {
		return res, fault.InvalidErr(fmt.Errorf("network %s changed (%s): Swarm networks cannot change in place; remove the stack's services that use it, or give the network a new name", c.Name, strings.Join(c.Fields, ", ")))
	}
	w, o := p.Wanted, p.Observed
	ids := map[stack.Kind]map[string]string{stack.KindNetwork: {}, stack.KindSecret: {}, stack.KindConfig: {}}
	for _, n := range o.Networks {
		ids[stack.KindNetwork][n.Name] = n.ID
	}
	for _, s := range o.Secrets {
		ids[stack.KindSecret][s.Name] = s.ID
	}
	for _, c := range o.Configs {
		ids[stack.KindConfig][c.Name] = c.ID
	}

	for _, c := range p.Of(stack.KindNetwork, plan.Created) {
		n := findNetwork(w, c.Name)
		r, err := a.Client.NetworkCreate(ctx, n.Name, client.NetworkCreateOptions{
			Driver: n.Driver, Scope: "swarm", Attachable: n.Attachable, Internal: n.Internal,
			Options: n.Options, Labels: n.Labels, IPAM: n.IPAM,
		})
		if err != nil {
			return res, fmt.Errorf("create network %s: %w", n.Name, err)
		}
		ids[stack.KindNetwork][n.Name] = r.ID
		a.Log.Info("network created", "stack", p.Stack, "network", n.Name)
	}
	for _, c := range p.Of(stack.KindSecret, plan.Created) {
		s := findObject(w.Secrets, c.Name)
		r, err := a.Client.SecretCreate(ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{
			Annotations: swarm.Annotations{Name: s.Name, Labels: s.Labels}, Data: s.Data,
		}})
		if err != nil {
			// The engine's error never holds the value; the name is safe to show.
			return res, fmt.Errorf("create secret %s: %w", s.Name, err)
		}
		ids[stack.KindSecret][s.Name] = r.ID
		a.Log.Info("secret created", "stack", p.Stack, "secret", s.Name)
	}
	for _, c := range p.Of(stack.KindConfig, plan.Created) {
		s := findObject(w.Configs, c.Name)
		r, err := a.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: s.Name, Labels: s.Labels}, Data: s.Data,
		}})
		if err != nil {
			return res, fmt.Errorf("create config %s: %w", s.Name, err)
		}
		ids[stack.KindConfig][s.Name] = r.ID
		a.Log.Info("config created", "stack", p.Stack, "config", s.Name)
	}
	// External objects are referenced by name; look their IDs up.
	if err := a.externalIDs(ctx, w, ids); err != nil {
		return res, err
	}

	since := a.Now().Add(-time.Second)
	touched := inflight
	// Every spec first: a reference that cannot be resolved is refused before anything is written.
	var creates, updates []write
	for _, c := range p.Changes {
		if c.Kind != stack.KindService || (c.Action != plan.Created && c.Action != plan.Configured) {
			continue
		}
		s := findService(w, c.Name)
		spec, err := resolve(s.Spec, ids)
		if err != nil {
			return res, err
		}
		if c.Action == plan.Created {
			creates = append(creates, write{change: c, name: s.Name, spec: spec})
		} else {
			updates = append(updates, write{change: c, name: s.Name, spec: spec})
		}
	}
	// A write that fails leaves the services written before it on the new version: roll them all back.
	abort := func(name string, err error) (*Result, error) {
		var failures []Failure
		for _, t := range touched {
			failures = append(failures, Failure{Service: t.name, Reason: "rolled back with the rest of the stack: " + name + " could not be written"})
		}
		if len(failures) > 0 {
			rerr := a.fail(ctx, res, touched, failures)
			return res, fmt.Errorf("%w; %v", err, rerr)
		}
		return res, err
	}
	// New services are created one after the other, in the plan's order. Created four at a time, fifty
	// services had their last task running 2-3 s later on the benchmark's engine than created one by one
	// (docs/benchmarks.md, "First deploy"): the burst made the engine start the tasks later, not sooner.
	for _, c := range creates {
		r, err := a.Client.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: c.spec, QueryRegistry: false})
		if err != nil {
			return abort(c.name, fmt.Errorf("create service %s: %w", c.name, err))
		}
		touched = append(touched, target{id: r.ID, name: c.name, created: true, since: since})
		a.Log.Info("service created", "stack", p.Stack, "service", c.name, "image", image(c.spec))
	}
	for _, u := range updates {
		obs := findService(o, u.change.Name)
		if _, err := a.Client.ServiceUpdate(ctx, obs.ID, client.ServiceUpdateOptions{
			Version: swarm.Version{Index: obs.Version}, Spec: u.spec, QueryRegistry: false,
		}); err != nil {
			return abort(u.name, fmt.Errorf("update service %s: %w", u.name, err))
		}
		touched = append(touched, target{id: obs.ID, name: u.name, updated: true, since: since})
		a.Log.Info("service updated", "stack", p.Stack, "service", u.name, "image", image(u.spec), "fields", strings.Join(u.change.Fields, ","))
	}

	failures, degraded := a.converge(ctx, touched)
	res.Degraded = degraded
	if len(failures) > 0 {
		return res, a.fail(ctx, res, touched, failures)
	}

	// Converged: remove what left the compose files and what was superseded.
	for _, c := range p.Of(stack.KindService, plan.Deleted) {
		obs := findService(o, c.Name)
		if _, err := a.Client.ServiceRemove(ctx, obs.ID, client.ServiceRemoveOptions{}); err != nil {
			return res, fmt.Errorf("remove service %s: %w", c.Name, err)
		}
		a.Log.Info("service removed", "stack", p.Stack, "service", c.Name)
	}
	for _, c := range p.Of(stack.KindSecret, plan.Deleted) {
		if err := a.retry(ctx, func() error {
			_, err := a.Client.SecretRemove(ctx, ids[stack.KindSecret][c.Name], client.SecretRemoveOptions{})
			return err
		}); err != nil {
			return res, fmt.Errorf("remove secret %s: %w", c.Name, err)
		}
		a.Log.Info("secret removed", "stack", p.Stack, "secret", c.Name)
	}
	for _, c := range p.Of(stack.KindConfig, plan.Deleted) {
		if err := a.retry(ctx, func() error {
			_, err := a.Client.ConfigRemove(ctx, ids[stack.KindConfig][c.Name], client.ConfigRemoveOptions{})
			return err
		}); err != nil {
			return res, fmt.Errorf("remove config %s: %w", c.Name, err)
		}
		a.Log.Info("config removed", "stack", p.Stack, "config", c.Name)
	}
	for _, c := range p.Of(stack.KindNetwork, plan.Deleted) {
		if err := a.retry(ctx, func() error {
			_, err := a.Client.NetworkRemove(ctx, ids[stack.KindNetwork][c.Name], client.NetworkRemoveOptions{})
			return err
		}); err != nil {
			return res, fmt.Errorf("remove network %s: %w", c.Name, err)
		}
		a.Log.Info("network removed", "stack", p.Stack, "network", c.Name)
	}
	return res, nil
}

// write is a service the apply creates or updates, with its spec resolved.
type write struct {
	change plan.Change
	name   string
	spec   swarm.ServiceSpec
}

// inflight returns the services the plan leaves unchanged but whose rolling update is still going on or
// paused: started by an earlier run that did not see it through.
func inflight(p *plan.Plan) []target {
	var out []target
	for _, c := range p.Of(stack.KindService, plan.Unchanged) {
		s := findService(p.Observed, c.Name)
		us := s.UpdateStatus
		if us == nil || (us.State != swarm.UpdateStateUpdating && us.State != swarm.UpdateStatePaused) {
			continue
		}
		since := time.Time{}
		if us.StartedAt != nil {
			since = us.StartedAt.Add(-time.Second)
		}
		out = append(out, target{id: s.ID, name: s.Name, updated: true, since: since})
	}
	return out
}

// retry repeats a removal while the engine still sees the object in use (tasks of a removed service take a
// moment to go away), within the applier's timeout.
func (a *Applier) retry(ctx context.Context, f func() error) error {
	deadline := a.Now().Add(a.Timeout)
	for {
		err := f()
		if err == nil || a.Now().After(deadline) || !strings.Contains(strings.ToLower(err.Error()), "in use") {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(a.Poll):
		}
	}
}

func (a *Applier) externalIDs(ctx context.Context, w *stack.Stack, ids map[stack.Kind]map[string]string) error {
	needSecrets, needConfigs := false, false
	for _, s := range w.Secrets {
		needSecrets = needSecrets || s.External
	}
	for _, c := range w.Configs {
		needConfigs = needConfigs || c.External
	}
	if needSecrets {
		l, err := a.Client.SecretList(ctx, client.SecretListOptions{})
		if err != nil {
			return fmt.Errorf("list secrets: %w", err)
		}
		for _, s := range l.Items {
			if _, ok := ids[stack.KindSecret][s.Spec.Name]; !ok {
				ids[stack.KindSecret][s.Spec.Name] = s.ID
			}
		}
	}
	if needConfigs {
		l, err := a.Client.ConfigList(ctx, client.ConfigListOptions{})
		if err != nil {
			return fmt.Errorf("list configs: %w", err)
		}
		for _, c := range l.Items {
			if _, ok := ids[stack.KindConfig][c.Spec.Name]; !ok {
				ids[stack.KindConfig][c.Spec.Name] = c.ID
			}
		}
	}
	return nil
}

// resolve fills the IDs the engine needs into a copy of spec. External networks stay by name (the engine
// resolves those).
func resolve(spec swarm.ServiceSpec, ids map[stack.Kind]map[string]string) (swarm.ServiceSpec, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return spec, err
	}
	var out swarm.ServiceSpec
	if err := json.Unmarshal(b, &out); err != nil {
		return spec, err
	}
	if cs := out.TaskTemplate.ContainerSpec; cs != nil {
		for _, s := range cs.Secrets {
			id, ok := ids[stack.KindSecret][s.SecretName]
			if !ok {
				return spec, fault.InvalidErr(fmt.Errorf("service %s: secret %s does not exist", spec.Name, s.SecretName))
			}
			s.SecretID = id
		}
		for _, c := range cs.Configs {
			id, ok := ids[stack.KindConfig][c.ConfigName]
			if !ok {
				return spec, fault.InvalidErr(fmt.Errorf("service %s: config %s does not exist", spec.Name, c.ConfigName))
			}
			c.ConfigID = id
		}
	}
	return out, nil
}

func image(spec swarm.ServiceSpec) string {
	if spec.TaskTemplate.ContainerSpec == nil {
		return ""
	}
	return spec.TaskTemplate.ContainerSpec.Image
}

func findNetwork(s *stack.Stack, name string) stack.Network {
	for _, n := range s.Networks {
		if n.Name == name {
			return n
		}
	}
	return stack.Network{Name: name}
}

func findObject(objs []stack.Object, name string) stack.Object {
	for _, o := range objs {
		if o.Name == name {
			return o
		}
	}
	return stack.Object{Name: name}
}

func findService(s *stack.Stack, name string) stack.Service {
	for _, svc := range s.Services {
		if svc.Name == name {
			return svc
		}
	}
	return stack.Service{Name: name}
}
