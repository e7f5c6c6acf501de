package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/verify"
)

// View is what the status page and /status show: the last cycle's record (the fields /status always had),
// and the stacks, the last cycles, the release that runs, the pin and the history. Every string in it went
// through the redactor; its order is deterministic (stacks and services by name, cycles and history newest
// first).
type View struct {
	Record
	Environment string `json:"environment"`
	// Running is the newest release that was rolled out successfully (its commit and pipeline link).
	Running *HistoryEntry  `json:"running,omitempty"`
	Pin     *Pin           `json:"pin,omitempty"`
	Stacks  []StackView    `json:"stacks"`
	Cycles  []Record       `json:"cycles"`
	History []HistoryEntry `json:"history"`
	// Key changes when the page's layout changes (an outcome, a release, a stack, a service, the pin, the
	// history): the page reloads then, and otherwise updates its figures (times, replicas, health) in place.
	Key string `json:"view_key"`
}

// StackView is one stack as its last rollout left it.
type StackView struct {
	Name    string          `json:"name"`
	Release string          `json:"release,omitempty"`
	Outcome outcome.Outcome `json:"outcome"`
	// Step names the step that failed, Reason why.
	Step   string `json:"step,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Excepted are the policy rules turned off by the policies' exception rules.
	Excepted []string      `json:"excepted,omitempty"`
	Services []ServiceView `json:"services"`
	// Warnings are the policy warnings and conversion remarks not about one service.
	Warnings []string `json:"warnings,omitempty"`
}

// ServiceView is one service: what it runs, who signed it, what the policies said, and its tasks.
type ServiceView struct {
	Name  string `json:"name"`
	Image string `json:"image"`
	// Digest is the image's manifest digest (sha256:...), when pinned.
	Digest string `json:"digest,omitempty"`
	// Signature is the verification's status (verified, warned, rejected), "unchecked" when verification is
	// off; Signers name who signed it (the key's name, or the keyless identity).
	Signature string   `json:"signature"`
	Signers   []string `json:"signers,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
	// Exceptions are the grants the platform gives this service (rule names).
	Exceptions []string `json:"exceptions,omitempty"`
	Replicas
	// Drift counts the times the service was found changed outside the agent and put back, since the start.
	Drift     int        `json:"drift_put_back"`
	LastDrift *time.Time `json:"last_drift,omitempty"`
}

// Replicas are a service's tasks now: running and desired, and a one-word health.
type Replicas struct {
	Running uint64 `json:"running"`
	Desired uint64 `json:"desired"`
	// Health: healthy (every desired task runs; with a healthcheck, running means healthy), degraded (some
	// run), down (none runs), unknown (the swarm could not be asked).
	Health string `json:"health"`
}

// HealthOf judges running against desired.
func HealthOf(running, desired uint64) string {
	switch {
	case running >= desired:
		return "healthy"
	case running > 0:
		return "degraded"
	}
	return "down"
}

// stackView is one stack's part of the status page, from its cycle.
func (l *Loop) stackView(c *Cycle) StackView {
	r := l.Redact.String
	v := StackView{Name: c.Options.Stack, Outcome: outcome.Of(c.Err), Step: c.Step, Services: []ServiceView{}}
	if c.Err != nil {
		v.Reason = r(c.Err.Error())
	}
	if c.Wanted == nil {
		return v
	}
	sigs := map[string]verify.Result{}
	for _, s := range c.Signatures {
		sigs[s.Ref] = s
		if s.Pinned != "" {
			sigs[s.Pinned] = s
		}
	}
	drifted := map[string]bool{}
	if c.Plan != nil {
		for _, ch := range c.Plan.Changes {
			if ch.Kind == stack.KindService && ch.Drift && ch.Action == plan.Configured {
				drifted[ch.Name] = true
			}
		}
	}
	var stackWarnings []string
	serviceWarnings := map[string][]string{}
	if d := c.Decisions; d != nil {
		v.Excepted = slices.Clone(d.Excepted)
		for _, w := range d.Warns() {
			msg := r(w.Rule + ": " + w.Message)
			if w.Service == "" {
				stackWarnings = append(stackWarnings, msg)
			} else {
				serviceWarnings[w.Service] = append(serviceWarnings[w.Service], msg)
			}
		}
	}
	for _, w := range c.Wanted.Warnings {
		msg := r(w.Field + ": " + w.Message)
		if w.Service == "" {
			stackWarnings = append(stackWarnings, msg)
		} else {
			serviceWarnings[w.Service] = append(serviceWarnings[w.Service], msg)
		}
	}
	if c.Result != nil {
		for _, d := range c.Result.Degraded {
			stackWarnings = append(stackWarnings, r("node fault (the release runs on every other node): "+d))
		}
	}
	v.Warnings = stackWarnings
	now := l.Now().UTC()
	for _, s := range c.Wanted.Services {
		sv := ServiceView{Name: s.Name, Signature: "unchecked", Replicas: Replicas{Health: "unknown"}}
		if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil {
			sv.Image = r(cs.Image)
			if _, d, ok := strings.Cut(cs.Image, "@"); ok {
				sv.Digest = d
			}
			if res, ok := sigs[cs.Image]; ok {
				sv.Signature, sv.Signers = string(res.Status), slices.Clone(res.Signers)
				if sv.Digest == "" {
					sv.Digest = res.Digest
				}
			}
		}
		if mode := s.Spec.Mode.Replicated; mode != nil && mode.Replicas != nil {
			sv.Desired = *mode.Replicas
		}
		sv.Warnings = append(serviceWarnings[s.Key], serviceWarnings[s.Name]...)
		for _, g := range l.Flow.Input.Grants {
			if (g.Stack == "" || g.Stack == c.Options.Stack) && (g.Service == "*" || g.Service == s.Key) {
				sv.Exceptions = append(sv.Exceptions, g.Rule)
			}
		}
		slices.Sort(sv.Exceptions)
		key := c.Options.Stack + "/" + s.Name
		if drifted[s.Name] && c.Err == nil {
			l.drift[key] = driftCount{n: l.drift[key].n + 1, last: now}
		}
		if d, ok := l.drift[key]; ok {
			sv.Drift, sv.LastDrift = d.n, &d.last
		}
		v.Services = append(v.Services, sv)
	}
	slices.SortFunc(v.Services, func(a, b ServiceView) int { return strings.Compare(a.Name, b.Name) })
	return v
}

type driftCount struct {
	n    int
	last time.Time
}

// replicaCache answers the page's frequent reads of the services' tasks from one read per stack every
// replicaTTL.
type replicaCache struct {
	mu   sync.Mutex
	at   map[string]time.Time
	data map[string]map[string]Replicas
}

const replicaTTL = 2 * time.Second

// View returns what the status page shows. The services' tasks are read from the swarm (through Replicas,
// at most every two seconds per stack).
func (l *Loop) View(ctx context.Context) View {
	l.mu.Lock()
	v := View{Record: l.last, Environment: l.Environment, Cycles: slices.Clone(l.cycles), History: slices.Clone(l.history)}
	if l.pin != nil {
		p := *l.pin
		v.Pin = &p
	}
	for _, s := range l.stacks {
		s.Services = slices.Clone(s.Services)
		v.Stacks = append(v.Stacks, s)
	}
	l.mu.Unlock()
	if v.Cycles == nil {
		v.Cycles = []Record{}
	}
	if v.History == nil {
		v.History = []HistoryEntry{}
	}
	if v.Stacks == nil {
		v.Stacks = []StackView{}
	}
	slices.SortFunc(v.Stacks, func(a, b StackView) int { return strings.Compare(a.Name, b.Name) })
	for i := range v.History {
		if v.History[i].Outcome == outcome.Success {
			h := v.History[i]
			v.Running = &h
			break
		}
	}
	for i := range v.Stacks {
		s := &v.Stacks[i]
		live := l.replicas(ctx, s.Name)
		for j := range s.Services {
			if r, ok := live[s.Services[j].Name]; ok {
				s.Services[j].Replicas = r
			}
		}
	}
	h := sha256.New()
	// The cycles' times are not in it (the page updates them in place): an unchanged release's cycles do not
	// redraw the page.
	fmt.Fprintf(h, "%s|%s|%s|%v|%d|", v.Outcome, v.Release, v.Reason, v.Held, len(v.Cycles))
	for _, c := range v.Cycles {
		fmt.Fprintf(h, "%s %s %s|", c.Outcome, c.Release, c.Reason)
	}
	if v.Pin != nil {
		fmt.Fprintf(h, "pin %s %s|", v.Pin.Release, v.Pin.Since)
	}
	for _, s := range v.Stacks {
		fmt.Fprintf(h, "%s:", s.Name)
		for _, sv := range s.Services {
			fmt.Fprintf(h, "%s %s %d,", sv.Name, sv.Image, sv.Drift)
		}
	}
	for _, e := range v.History {
		fmt.Fprintf(h, "%s %s %s|", e.Release, e.Outcome, e.Time)
	}
	v.Key = hex.EncodeToString(h.Sum(nil))[:16]
	return v
}

// replicas reads a stack's tasks, at most every replicaTTL.
func (l *Loop) replicas(ctx context.Context, stackName string) map[string]Replicas {
	if l.Replicas == nil {
		return nil
	}
	c := &l.replicaCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at == nil {
		c.at, c.data = map[string]time.Time{}, map[string]map[string]Replicas{}
	}
	if at, ok := c.at[stackName]; ok && l.Now().Sub(at) < replicaTTL {
		return c.data[stackName]
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := l.Replicas(rctx, stackName)
	if err != nil {
		l.Log.Warn("status page: reading the services' tasks", "stack", stackName, "err", l.Redact.String(err.Error()))
		m = nil
	}
	c.at[stackName], c.data[stackName] = l.Now(), m
	return m
}
