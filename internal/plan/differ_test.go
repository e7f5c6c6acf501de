package plan

import (
	"reflect"
	"testing"

	"github.com/sabeiro/sawmill/internal/stack"
)

// A Differ plans as Compute does; it reuses a service's comparison only while the observed service's
// version, the wanted spec and the network names are those it compared: drift (a new version) is seen.
func TestDifferReusesOnlyUnchangedComparisons(t *testing.T) {
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Secrets: []stack.Object{secret("s", "s_pw-1")},
		Services: []stack.Service{svc("s", "web", "web:1", "s_pw-1"), svc("s", "api", "api:1", "")}}
	o := observe(w)
	var d Differ
	check := func(what string, w, o *stack.Stack, reused int) *Plan {
		t.Helper()
		got, err := d.Compute(w, o)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Compute(w, o)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Changes, want.Changes) {
			t.Fatalf("%s: Differ planned\n%+v\nCompute\n%+v", what, got.Changes, want.Changes)
		}
		if d.Reused() != reused {
			t.Fatalf("%s: %d comparisons reused, want %d", what, d.Reused(), reused)
		}
		return got
	}
	check("first", w, o, 0)
	if p := check("unchanged", w, o, 2); p.Writes() {
		t.Fatalf("no-op plan writes: %s", actions(p))
	}

	// Drift: `docker service update --image` keeps the labels, and Swarm raises the version.
	drifted := observe(w)
	drifted.Services[0].Spec.TaskTemplate.ContainerSpec.Image = "evil:1"
	drifted.Services[0].Version++
	if p := check("drift", w, drifted, 3); len(p.Of(stack.KindService, Configured)) != 1 {
		t.Fatalf("drift not seen: %s", actions(p))
	}
	// A new wanted spec (new hash) is compared anew.
	w2 := &stack.Stack{Name: "s", Networks: w.Networks, Secrets: w.Secrets, Services: []stack.Service{svc("s", "web", "web:2", "s_pw-1"), w.Services[1]}}
	if p := check("new image", w2, drifted, 4); len(p.Of(stack.KindService, Configured)) != 1 {
		t.Fatalf("image change not seen: %s", actions(p))
	}
	// Network names changed (the same ID now names another network): compared anew.
	renamed := observe(w)
	renamed.Services[0].Version = drifted.Services[0].Version
	renamed.Networks[0].Name = "s_other"
	check("network renamed", w2, renamed, 4)
	// Changes returned are the caller's: editing them changes nothing remembered.
	p := check("again", w2, renamed, 6)
	for i := range p.Changes {
		p.Changes[i].Fields = append(p.Changes[i].Fields, "edited")
	}
	check("after edit", w2, renamed, 8)
}

// The comparisons of one Differ, given to a new one (another process: `agent apply --cache-dir`), are
// reused while their keys match, and a changed service is compared anew.
func TestDifferRemembersAnotherDiffersComparisons(t *testing.T) {
	w := &stack.Stack{Name: "s", Networks: []stack.Network{network("s")}, Secrets: []stack.Object{secret("s", "s_pw-1")},
		Services: []stack.Service{svc("s", "web", "web:1", "s_pw-1"), svc("s", "api", "api:1", "")}}
	o := observe(w)
	var first Differ
	if _, err := first.Compute(w, o); err != nil {
		t.Fatal(err)
	}
	kept := first.Comparisons("s")
	if len(kept) != 2 || first.Comparisons("other") != nil {
		t.Fatalf("comparisons: %+v", kept)
	}

	var second Differ
	second.Remember("s", kept)
	p, err := second.Compute(w, o)
	if err != nil {
		t.Fatal(err)
	}
	if second.Reused() != 2 || p.Writes() {
		t.Fatalf("reused %d, plan %s", second.Reused(), actions(p))
	}

	drifted := observe(w)
	drifted.Services[0].Spec.TaskTemplate.ContainerSpec.Image = "evil:1"
	drifted.Services[0].Version++
	var third Differ
	third.Remember("s", kept)
	p, err = third.Compute(w, drifted)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Compute(w, drifted)
	if third.Reused() != 1 || !reflect.DeepEqual(p.Changes, want.Changes) || len(p.Of(stack.KindService, Configured)) != 1 {
		t.Fatalf("reused %d, plan %s, want %s", third.Reused(), actions(p), actions(want))
	}
}
