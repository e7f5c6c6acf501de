package plan

import (
	"bytes"
	"maps"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

func svc(stackName, key, image, secret string) stack.Service {
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: stack.Scope(stackName, key), Labels: stack.StackLabels(stackName, nil)},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: stackName + "_default", Aliases: []string{key}}},
		},
	}
	if secret != "" {
		spec.TaskTemplate.ContainerSpec.Secrets = []*swarm.SecretReference{{SecretName: secret, File: &swarm.SecretReferenceFileTarget{Name: "pw", UID: "0", GID: "0", Mode: 0o444}}}
	}
	spec.Labels[stack.LabelSpecHash] = stack.Hash(spec)
	return stack.Service{Name: spec.Name, Key: key, Spec: spec}
}

func secret(stackName, name string) stack.Object {
	l := stack.StackLabels(stackName, nil)
	return stack.Object{Name: name, Labels: l}
}

func network(stackName string) stack.Network {
	n := stack.Network{Name: stackName + "_default", Key: "default", Driver: "overlay", Labels: stack.StackLabels(stackName, nil)}
	n.Labels[stack.LabelSpecHash] = stack.Hash(n)
	return n
}

// observe turns a wanted stack into what the engine would report: IDs instead of names in references.
func observe(w *stack.Stack) *stack.Stack {
	o := &stack.Stack{Name: w.Name}
	for _, n := range w.Networks {
		n.ID = "net-" + n.Name
		o.Networks = append(o.Networks, n)
	}
	for _, s := range w.Secrets {
		s.ID = "sec-" + s.Name
		o.Secrets = append(o.Secrets, s)
	}
	for _, s := range w.Services {
		spec := Normalize(s.Spec, nil) // deep copy
		for i := range spec.TaskTemplate.Networks {
			spec.TaskTemplate.Networks[i].Target = "net-" + spec.TaskTemplate.Networks[i].Target
		}
		for _, ref := range spec.TaskTemplate.ContainerSpec.Secrets {
			ref.SecretID = "sec-" + ref.SecretName
		}
		o.Services = append(o.Services, stack.Service{Name: s.Name, Spec: spec, ID: "id-" + s.Name, Version: 7})
	}
	return o
}

func actions(p *Plan) string {
	var b strings.Builder
	for _, c := range p.Changes {
		b.WriteString(string(c.Kind) + " " + c.Name + " " + string(c.Action) + "\n")
	}
	return b.String()
}

func TestFirstDeployCreatesEverything(t *testing.T) {
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Secrets: []stack.Object{secret("s", "s_pw-1")}, Services: []stack.Service{svc("s", "web", "web:1", "s_pw-1")}}
	p, err := Compute(w, &stack.Stack{Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	want := "network s_default created\nsecret s_pw-1 created\nservice s_web created\n"
	if got := actions(p); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if !p.Writes() {
		t.Fatal("a plan with creations says it writes nothing")
	}
}

func TestSameStateIsUnchanged(t *testing.T) {
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Secrets: []stack.Object{secret("s", "s_pw-1")}, Services: []stack.Service{svc("s", "web", "web:1", "s_pw-1")}}
	p, err := Compute(w, observe(w))
	if err != nil {
		t.Fatal(err)
	}
	if p.Writes() {
		t.Fatalf("the observed copy of the wanted state needs writes:\n%s", actions(p))
	}
}

func TestImageChangeIsConfiguredWithFields(t *testing.T) {
	old := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:1", "")}}
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:2", "")}}
	p, err := Compute(w, observe(old))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Of(stack.KindService, Configured)
	if len(c) != 1 || c[0].Detail != "image web:1 -> web:2" || c[0].Drift || strings.Join(c[0].Fields, ",") != "TaskTemplate.ContainerSpec.Image" {
		t.Fatalf("changes %+v", p.Changes)
	}
}

func TestDriftIsDetected(t *testing.T) {
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:1", "")}}
	o := observe(w)
	// `docker service update --image` keeps the labels, so the spec hash still matches.
	o.Services[0].Spec.TaskTemplate.ContainerSpec.Image = "evil:1"
	p, err := Compute(w, o)
	if err != nil {
		t.Fatal(err)
	}
	c := p.Of(stack.KindService, Configured)
	if len(c) != 1 || !c[0].Drift || !strings.Contains(c[0].Detail, "drift") {
		t.Fatalf("drift not reported: %+v", p.Changes)
	}
}

func TestRemovedFieldIsAChange(t *testing.T) {
	old := svc("s", "web", "web:1", "")
	old.Spec.TaskTemplate.ContainerSpec.Env = []string{"A=1"}
	old.Spec.Labels[stack.LabelSpecHash] = ""
	old.Spec.Labels[stack.LabelSpecHash] = stack.Hash(old.Spec)
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:1", "")}}
	p, err := Compute(w, observe(&stack.Stack{Name: "s", Networks: w.Networks, Services: []stack.Service{old}}))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Of(stack.KindService, Configured)
	if len(c) != 1 || strings.Join(c[0].Fields, ",") != "TaskTemplate.ContainerSpec.Env" {
		t.Fatalf("removing env is not a change: %+v", p.Changes)
	}
}

func TestNotOwnedIsAConflict(t *testing.T) {
	w := &stack.Stack{Name: "s", Services: []stack.Service{svc("s", "web", "web:1", "")}}
	o := observe(w)
	delete(o.Services[0].Spec.Labels, stack.LabelOwner) // deployed by `docker stack deploy`, say
	_, err := Compute(w, o)
	if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "s_web") {
		t.Fatalf("err %v", err)
	}
}

func TestPruneAndRollbackKeep(t *testing.T) {
	// web moves from secret pw-1 to pw-2; api (unchanged) still has pw-0 in its PreviousSpec; old-svc left.
	oldWeb := svc("s", "web", "web:1", "s_pw-1")
	api := svc("s", "api", "api:1", "s_pw-2")
	gone := svc("s", "gone", "gone:1", "")
	observed := observe(&stack.Stack{Name: "s", Networks: []stack.Network{network("s")},
		Secrets:  []stack.Object{secret("s", "s_pw-0"), secret("s", "s_pw-1"), secret("s", "s_pw-2"), secret("s", "s_stale")},
		Services: []stack.Service{api, gone, oldWeb}})
	prev := svc("s", "api", "api:0", "s_pw-0").Spec
	observed.Services[0].PreviousSpec = &prev
	// An object of another owner in the same namespace is never touched.
	foreign := stack.Object{Name: "s_foreign", ID: "x", Labels: map[string]string{stack.LabelNamespace: "s"}}
	observed.Secrets = append(observed.Secrets, foreign)

	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Secrets: []stack.Object{secret("s", "s_pw-2")},
		Services: []stack.Service{api, svc("s", "web", "web:1", "s_pw-2")}}
	p, err := Compute(w, observed)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"network s_default unchanged",
		"secret s_pw-2 unchanged",
		"secret s_pw-0 unchanged", // api's PreviousSpec needs it
		"secret s_pw-1 unchanged", // web's current spec becomes its PreviousSpec
		"secret s_stale deleted",
		"service s_api unchanged",
		"service s_web configured",
		"service s_gone deleted",
	}, "\n") + "\n"
	if got := actions(p); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestRenderNeverShowsValues(t *testing.T) {
	old := svc("s", "web", "web:1", "")
	old.Spec.TaskTemplate.ContainerSpec.Env = []string{"DB_PASSWORD=old-value"}
	old.Spec.Labels[stack.LabelSpecHash] = "x"
	nw := svc("s", "web", "web:1", "")
	nw.Spec.TaskTemplate.ContainerSpec.Env = []string{"DB_PASSWORD=new-value"}
	p, err := Compute(&stack.Stack{Name: "s", Services: []stack.Service{nw}}, observe(&stack.Stack{Name: "s", Services: []stack.Service{old}}))
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	if err := Render(&text, p); err != nil {
		t.Fatal(err)
	}
	if err := RenderJSON(&js, p); err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{text.String(), js.String()} {
		if strings.Contains(out, "value") {
			t.Fatalf("plan output shows an environment value:\n%s", out)
		}
		if !strings.Contains(out, "TaskTemplate.ContainerSpec.Env") {
			t.Fatalf("plan output does not name the changed field:\n%s", out)
		}
	}
}

// A change outside the agent that adds something the compose files do not set is drift too.
func TestAddedFieldsAreDrift(t *testing.T) {
	for name, add := range map[string]func(*swarm.ServiceSpec){
		"bind mount of /": func(s *swarm.ServiceSpec) {
			s.TaskTemplate.ContainerSpec.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: "/", Target: "/host"}}
		},
		"CAP_SYS_ADMIN": func(s *swarm.ServiceSpec) { s.TaskTemplate.ContainerSpec.CapabilityAdd = []string{"CAP_SYS_ADMIN"} },
		"LD_PRELOAD":    func(s *swarm.ServiceSpec) { s.TaskTemplate.ContainerSpec.Env = []string{"LD_PRELOAD=/tmp/x.so"} },
		"published port": func(s *swarm.ServiceSpec) {
			s.EndpointSpec = &swarm.EndpointSpec{Ports: []swarm.PortConfig{{TargetPort: 22, PublishedPort: 2222}}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:1", "")}}
			o := observe(w)
			add(&o.Services[0].Spec)
			p, err := Compute(w, o)
			if err != nil {
				t.Fatal(err)
			}
			c := p.Of(stack.KindService, Configured)
			if len(c) != 1 || !c[0].Drift || len(c[0].Fields) == 0 {
				t.Fatalf("an added field is not drift: %+v", p.Changes)
			}
		})
	}
	// The engine's own defaults are not.
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:1", "")}}
	o := observe(w)
	o.Services[0].Spec.TaskTemplate.ContainerSpec.Isolation = "default"
	o.Services[0].Spec.TaskTemplate.Runtime = "container"
	if p, err := Compute(w, o); err != nil || p.Writes() {
		t.Fatalf("engine defaults taken for drift: %+v %v", p.Changes, err)
	}
}

// Objects of the stack's names that the agent did not make (or made for another environment) are conflicts,
// never adopted: services, networks, and secrets and configs too (same name, but not ours).
func TestObjectsOfOthersAreConflicts(t *testing.T) {
	secret := stack.Object{Name: "s_pw-abc", Key: "pw", Labels: stack.StackLabels("s", nil), Data: []byte("x"), Hash: "abc"}
	wanted := func() *stack.Stack {
		return &stack.Stack{Name: "s", Environment: "staging", Networks: []stack.Network{network("s")},
			Secrets: []stack.Object{secret}, Services: []stack.Service{svc("s", "web", "web:1", "s_pw-abc")}}
	}
	for name, strip := range map[string]func(o *stack.Stack){
		"secret without owner": func(o *stack.Stack) { delete(o.Secrets[0].Labels, stack.LabelOwner) },
		"secret of production": func(o *stack.Stack) { o.Secrets[0].Labels[stack.LabelEnvironment] = "production" },
		"service of production": func(o *stack.Stack) {
			o.Services[0].Spec.Labels[stack.LabelEnvironment] = "production"
		},
		"network without owner": func(o *stack.Stack) { delete(o.Networks[0].Labels, stack.LabelOwner) },
	} {
		t.Run(name, func(t *testing.T) {
			o := observe(wanted())
			for i := range o.Secrets {
				o.Secrets[i].Labels = maps.Clone(o.Secrets[i].Labels)
			}
			o.Networks[0].Labels = maps.Clone(o.Networks[0].Labels)
			o.Services[0].Spec.Labels = maps.Clone(o.Services[0].Spec.Labels)
			strip(o)
			_, err := Compute(wanted(), o)
			if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "refusing to modify or adopt") {
				t.Fatalf("Compute: %v, want a conflict", err)
			}
		})
	}
	// Labelled for this environment, or from before environments were labelled: ours.
	o := observe(wanted())
	if _, err := Compute(wanted(), o); err != nil {
		t.Fatal(err)
	}
}

// A forced update (the agent re-issuing a stalled Swarm update, or `docker service update --force`) raises
// TaskTemplate.ForceUpdate: that is no change to roll out again, nor drift.
func TestForceUpdateIsNoChange(t *testing.T) {
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Services: []stack.Service{svc("s", "web", "web:1", "")}}
	o := observe(w)
	o.Services[0].Spec.TaskTemplate.ForceUpdate = 2
	for name, compute := range map[string]func(w, o *stack.Stack) (*Plan, error){"Compute": Compute, "Differ": new(Differ).Compute} {
		p, err := compute(w, o)
		if err != nil {
			t.Fatal(err)
		}
		if p.Writes() {
			t.Fatalf("%s: a forced update planned %+v", name, p.Changes)
		}
	}
}
