// Package plan compares the wanted state of a stack with the observed one and says, for every network,
// secret, config and service, whether it is created, configured, unchanged or deleted, and which fields
// differ. Compute is a pure function: no I/O, no clock; a Differ (the daemon's; `agent apply --cache-dir`
// keeps one's Comparisons on disk) also remembers the last comparison of each service, to reuse it while
// nothing it depends on changed.
//
// In: two *stack.Stack (wanted from internal/compose, observed from internal/swarm). Out: *Plan.
// Imports internal/stack, internal/fault and the Docker API types only.
package plan

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// Action is what happens to one object.
type Action string

// The actions, named as Flux names its change set.
const (
	Created    Action = "created"
	Configured Action = "configured"
	Unchanged  Action = "unchanged"
	Deleted    Action = "deleted"
)

// Change is one object's line in the plan.
type Change struct {
	Kind   stack.Kind `json:"kind"`
	Name   string     `json:"name"`
	Action Action     `json:"action"`
	// Fields are the spec paths that differ (configured only). Values are not shown: they may hold
	// credentials.
	Fields []string `json:"fields,omitempty"`
	// Detail is a short human note: the image change, drift, or why a superseded object is kept.
	Detail string `json:"detail,omitempty"`
	// Drift: the object was changed outside the agent (its spec no longer matches what the agent wrote).
	Drift bool `json:"drift,omitempty"`
}

// Plan is the change set for one stack.
type Plan struct {
	Stack    string          `json:"stack"`
	Changes  []Change        `json:"changes"`
	Warnings []stack.Warning `json:"warnings,omitempty"`

	Wanted   *stack.Stack `json:"-"`
	Observed *stack.Stack `json:"-"`
}

// Writes reports whether applying the plan changes anything on the swarm.
func (p *Plan) Writes() bool {
	for _, c := range p.Changes {
		if c.Action != Unchanged {
			return true
		}
	}
	return false
}

// Of returns the changes of one kind with one action, in plan order.
func (p *Plan) Of(kind stack.Kind, action Action) []Change {
	var out []Change
	for _, c := range p.Changes {
		if c.Kind == kind && c.Action == action {
			out = append(out, c)
		}
	}
	return out
}

// Compute compares wanted with observed. An object of the wanted stack's name that the agent did not create
// is a conflict: an error classified fault.Invalid, since the agent never modifies what it does not own.
func Compute(wanted, observed *stack.Stack) (*Plan, error) {
	return compute(wanted, observed, func(w, o stack.Service, netNames map[string]string) ([]string, bool) {
		return ServiceDiff(w.Spec, Normalize(o.Spec, netNames))
	})
}

func compute(wanted, observed *stack.Stack, diff func(w, o stack.Service, netNames map[string]string) ([]string, bool)) (*Plan, error) {
	p := &Plan{Stack: wanted.Name, Wanted: wanted, Observed: observed, Warnings: wanted.Warnings}
	netNames := map[string]string{} // observed network ID -> name
	for _, n := range observed.Networks {
		netNames[n.ID] = n.Name
	}

	// Networks.
	obsNet := map[string]stack.Network{}
	for _, n := range observed.Networks {
		obsNet[n.Name] = n
	}
	for _, n := range wanted.Networks {
		if n.External {
			continue
		}
		o, ok := obsNet[n.Name]
		switch {
		case !ok:
			p.add(stack.KindNetwork, n.Name, Created, nil, "")
		case !stack.OwnedBy(o.Labels, wanted.Name, wanted.Environment):
			return nil, conflict(stack.KindNetwork, n.Name)
		case o.Labels[stack.LabelSpecHash] != n.Labels[stack.LabelSpecHash]:
			p.add(stack.KindNetwork, n.Name, Configured, networkFields(n, o), "networks cannot change in place")
		default:
			p.add(stack.KindNetwork, n.Name, Unchanged, nil, "")
		}
		delete(obsNet, n.Name)
	}

	// Services first, since which superseded secrets and configs must stay depends on them.
	obsSvc := map[string]stack.Service{}
	for _, s := range observed.Services {
		obsSvc[s.Name] = s
	}
	keep := map[string]string{} // secret/config name kept for a rollback -> service
	var svcChanges []Change
	for _, s := range wanted.Services {
		o, ok := obsSvc[s.Name]
		delete(obsSvc, s.Name)
		if !ok {
			svcChanges = append(svcChanges, Change{Kind: stack.KindService, Name: s.Name, Action: Created})
			continue
		}
		if !stack.OwnedBy(o.Spec.Labels, wanted.Name, wanted.Environment) {
			return nil, conflict(stack.KindService, s.Name)
		}
		fields, drift := diff(s, o, netNames)
		if len(fields) == 0 {
			svcChanges = append(svcChanges, Change{Kind: stack.KindService, Name: s.Name, Action: Unchanged})
			if o.PreviousSpec != nil {
				refs(*o.PreviousSpec, s.Name, keep)
			}
			continue
		}
		detail := ""
		if wi, oi := image(s.Spec), image(o.Spec); wi != oi {
			detail = "image " + oi + " -> " + wi
		}
		if drift {
			detail = strings.TrimPrefix(detail+"; changed outside the agent (drift)", "; ")
		}
		svcChanges = append(svcChanges, Change{Kind: stack.KindService, Name: s.Name, Action: Configured, Fields: fields, Detail: detail, Drift: drift})
		// After the update the current spec becomes PreviousSpec: what it references must stay.
		refs(o.Spec, s.Name, keep)
	}
	for _, name := range slices.Sorted(maps.Keys(obsSvc)) {
		if o := obsSvc[name]; stack.OwnedBy(o.Spec.Labels, wanted.Name, wanted.Environment) {
			svcChanges = append(svcChanges, Change{Kind: stack.KindService, Name: name, Action: Deleted})
		}
	}

	if err := p.objects(stack.KindSecret, wanted.Environment, wanted.Secrets, observed.Secrets, keep); err != nil {
		return nil, err
	}
	if err := p.objects(stack.KindConfig, wanted.Environment, wanted.Configs, observed.Configs, keep); err != nil {
		return nil, err
	}
	p.Changes = append(p.Changes, svcChanges...)

	for _, name := range slices.Sorted(maps.Keys(obsNet)) {
		if o := obsNet[name]; stack.OwnedBy(o.Labels, wanted.Name, wanted.Environment) {
			p.add(stack.KindNetwork, name, Deleted, nil, "")
		}
	}
	return p, nil
}

func (p *Plan) add(kind stack.Kind, name string, a Action, fields []string, detail string) {
	p.Changes = append(p.Changes, Change{Kind: kind, Name: name, Action: a, Fields: fields, Detail: detail})
}

func (p *Plan) objects(kind stack.Kind, env string, wanted, observed []stack.Object, keep map[string]string) error {
	obs := map[string]stack.Object{}
	for _, o := range observed {
		obs[o.Name] = o
	}
	for _, w := range wanted {
		if w.External {
			continue
		}
		if o, ok := obs[w.Name]; ok {
			// The name carries the content hash: same name, same content; but only an object the agent made.
			if !stack.OwnedBy(o.Labels, p.Stack, env) {
				return conflict(kind, w.Name)
			}
			p.add(kind, w.Name, Unchanged, nil, "")
			delete(obs, w.Name)
			continue
		}
		p.add(kind, w.Name, Created, nil, "")
	}
	for _, name := range slices.Sorted(maps.Keys(obs)) {
		o := obs[name]
		if !stack.OwnedBy(o.Labels, p.Stack, env) {
			continue
		}
		if svc, ok := keep[name]; ok {
			p.add(kind, name, Unchanged, nil, "superseded; kept while "+svc+" may roll back to it")
			continue
		}
		p.add(kind, name, Deleted, nil, "")
	}
	return nil
}

func conflict(kind stack.Kind, name string) error {
	return fault.InvalidErr(fmt.Errorf("%s %s exists but was not created by the agent for this stack and environment (labels %s=%s, %s, %s): refusing to modify or adopt it",
		kind, name, stack.LabelOwner, stack.OwnerValue, stack.LabelNamespace, stack.LabelEnvironment))
}

func refs(spec swarm.ServiceSpec, svc string, into map[string]string) {
	cs := spec.TaskTemplate.ContainerSpec
	if cs == nil {
		return
	}
	for _, s := range cs.Secrets {
		into[s.SecretName] = svc
	}
	for _, c := range cs.Configs {
		into[c.ConfigName] = svc
	}
}

func image(spec swarm.ServiceSpec) string {
	if spec.TaskTemplate.ContainerSpec == nil {
		return ""
	}
	return spec.TaskTemplate.ContainerSpec.Image
}

// Normalize rewrites an observed spec into the form the converter produces: object references by name (the
// engine stores IDs), network targets by name, no forced-update counter.
func Normalize(spec swarm.ServiceSpec, netNames map[string]string) swarm.ServiceSpec {
	b, _ := json.Marshal(spec)
	var out swarm.ServiceSpec
	_ = json.Unmarshal(b, &out) // a deep copy
	// A forced update (`docker service update --force`, or the agent re-issuing a stalled update) changes
	// nothing the agent writes.
	out.TaskTemplate.ForceUpdate = 0
	if cs := out.TaskTemplate.ContainerSpec; cs != nil {
		for _, s := range cs.Secrets {
			s.SecretID = ""
		}
		for _, c := range cs.Configs {
			c.ConfigID = ""
		}
	}
	for i, n := range out.TaskTemplate.Networks {
		if name, ok := netNames[n.Target]; ok {
			out.TaskTemplate.Networks[i].Target = name
		}
	}
	sort.Slice(out.TaskTemplate.Networks, func(i, j int) bool {
		return out.TaskTemplate.Networks[i].Target < out.TaskTemplate.Networks[j].Target
	})
	return out
}

// engineDefaults are the fields the engine fills into every service spec it stores (the observed value of
// a field the agent never writes): they are not differences.
var engineDefaults = map[string]string{
	"TaskTemplate.ContainerSpec.Isolation": `"default"`,
	"TaskTemplate.Runtime":                 `"container"`,
	// Swarm's enums read back their zero values when a config is given without them.
	"UpdateConfig.FailureAction":   `"pause"`,
	"UpdateConfig.Order":           `"stop-first"`,
	"RollbackConfig.FailureAction": `"pause"`,
	"RollbackConfig.Order":         `"stop-first"`,
}

// ServiceDiff returns the paths where observed differs from wanted, both ways: a field that differs, a field
// the wanted spec sets and the observed lacks, and a field the observed spec has that the wanted does not
// (an added bind mount, capability or variable), except the engine's own defaults. drift is true when the
// spec hash label matches (the compose files did not change since the agent wrote the service) but the
// fields do not: someone changed the service outside the agent.
func ServiceDiff(wanted, observed swarm.ServiceSpec) (fields []string, drift bool) {
	w, o := flatten(wanted), flatten(observed)
	hashKey := "Labels." + stack.LabelSpecHash
	sameHash := w[hashKey] == o[hashKey]
	for path, wv := range w {
		if path != hashKey && o[path] != wv {
			fields = append(fields, path)
		}
	}
	for path, ov := range o {
		if _, ok := w[path]; !ok && path != hashKey && engineDefaults[path] != ov {
			fields = append(fields, path)
		}
	}
	if !sameHash && len(fields) == 0 {
		fields = append(fields, hashKey)
	}
	sort.Strings(fields)
	return fields, sameHash && len(fields) > 0
}

func networkFields(w, o stack.Network) []string {
	var f []string
	if w.Driver != o.Driver {
		f = append(f, "Driver")
	}
	if w.Attachable != o.Attachable {
		f = append(f, "Attachable")
	}
	if w.Internal != o.Internal {
		f = append(f, "Internal")
	}
	if fmt.Sprint(w.Options) != fmt.Sprint(o.Options) {
		f = append(f, "Options")
	}
	if len(f) == 0 {
		f = append(f, "Labels")
	}
	return f
}

// flatten turns a value into path -> JSON of the leaf; objects are walked, lists are leaves.
func flatten(v any) map[string]string {
	b, _ := json.Marshal(v)
	var tree any
	_ = json.Unmarshal(b, &tree)
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok && len(m) > 0 {
			for k, child := range m {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(p, child)
			}
			return
		}
		if isZero(v) {
			return
		}
		out[prefix] = leafJSON(v)
	}
	walk("", tree)
	return out
}

// leafJSON is string(json.Marshal(v)) without the encoder for the common leaves: booleans, integral numbers
// and strings that need no escaping (a no-op plan of 50 services compares a few thousand of them).
func leafJSON(v any) string {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x)
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return strconv.FormatInt(int64(x), 10)
		}
	case string:
		if plainJSONString(x) {
			return `"` + x + `"`
		}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// plainJSONString reports whether encoding/json writes s as itself in quotes: printable ASCII without '"',
// '\\' and the HTML characters it escapes.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func isZero(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}
