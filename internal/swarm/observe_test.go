package swarm

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// listing answers the four list calls (empty, or listErr) and Info, counting every call.
type listing struct {
	Reader
	info    system.Info
	listErr error
	calls   atomic.Int32
	infos   atomic.Int32
}

func (f *listing) Info(context.Context, client.InfoOptions) (client.SystemInfoResult, error) {
	f.calls.Add(1)
	f.infos.Add(1)
	return client.SystemInfoResult{Info: f.info}, nil
}

func (f *listing) ServiceList(context.Context, client.ServiceListOptions) (client.ServiceListResult, error) {
	f.calls.Add(1)
	return client.ServiceListResult{}, f.listErr
}

func (f *listing) NetworkList(context.Context, client.NetworkListOptions) (client.NetworkListResult, error) {
	f.calls.Add(1)
	return client.NetworkListResult{}, f.listErr
}

func (f *listing) SecretList(context.Context, client.SecretListOptions) (client.SecretListResult, error) {
	f.calls.Add(1)
	return client.SecretListResult{}, f.listErr
}

func (f *listing) ConfigList(context.Context, client.ConfigListOptions) (client.ConfigListResult, error) {
	f.calls.Add(1)
	return client.ConfigListResult{}, f.listErr
}

// A stack is observed with one list call per object kind and nothing else (the daemon's no-op cycle).
func TestObserverListsOncePerKind(t *testing.T) {
	f := &listing{info: system.Info{Swarm: swarm.Info{LocalNodeState: swarm.LocalNodeStateActive, ControlAvailable: true}}}
	if _, err := (Observer{Client: f}).Observe(context.Background(), "app"); err != nil {
		t.Fatal(err)
	}
	if n := f.calls.Load(); n != 4 || f.infos.Load() != 0 {
		t.Errorf("observe made %d calls (%d Info), want the 4 lists", n, f.infos.Load())
	}
}

// On an engine that is not a swarm manager the lists fail; the error says why, and is invalid input (exit 2).
func TestObserverExplainsNotManager(t *testing.T) {
	f := &listing{info: system.Info{Swarm: swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive}},
		listErr: errors.New("This node is not a swarm manager.")}
	_, err := (Observer{Client: f}).Observe(context.Background(), "app")
	if !errors.Is(err, ErrNotManager) || !strings.Contains(err.Error(), "swarm init") || fault.KindOf(err) != fault.Invalid {
		t.Errorf("err = %v, want ErrNotManager, invalid, naming `swarm init`", err)
	}
	// A manager whose list failed for another reason keeps that error.
	f = &listing{info: system.Info{Swarm: swarm.Info{LocalNodeState: swarm.LocalNodeStateActive, ControlAvailable: true}},
		listErr: errors.New("connection reset")}
	_, err = (Observer{Client: f}).Observe(context.Background(), "app")
	if err == nil || errors.Is(err, ErrNotManager) || !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("err = %v, want the list error", err)
	}
}

// filtering answers the secret and config lists as the engine does: a "label" filter keeps the objects
// with that label and value, a "name" filter those whose name starts with it; no filter, every object.
type filtering struct {
	listing
	secrets []swarm.Secret
	configs []swarm.Config
}

// filtered returns the items the engine returns for filters f: every "label" filter (key=value) holds and,
// when "name" filters are given, the name starts with one of them.
func filtered[T any](items []T, f client.Filters, annotations func(T) swarm.Annotations) []T {
	var out []T
	for _, x := range items {
		a, ok := annotations(x), len(f["name"]) == 0
		for n := range f["name"] {
			ok = ok || strings.HasPrefix(a.Name, n)
		}
		for l := range f["label"] {
			k, v, _ := strings.Cut(l, "=")
			ok = ok && a.Labels[k] == v
		}
		if ok {
			out = append(out, x)
		}
	}
	return out
}

func (f *filtering) SecretList(_ context.Context, o client.SecretListOptions) (client.SecretListResult, error) {
	f.calls.Add(1)
	return client.SecretListResult{Items: filtered(f.secrets, o.Filters, func(s swarm.Secret) swarm.Annotations { return s.Spec.Annotations })}, nil
}

func (f *filtering) ConfigList(_ context.Context, o client.ConfigListOptions) (client.ConfigListResult, error) {
	f.calls.Add(1)
	return client.ConfigListResult{Items: filtered(f.configs, o.Filters, func(c swarm.Config) swarm.Annotations { return c.Spec.Annotations })}, nil
}

// Listing the stack's secrets and configs by its label and by its name prefix observes what the lists of
// every object observe: the stack's own (labelled and prefixed), those named otherwise but labelled (a
// compose `name:`), those prefixed but not labelled (not the agent's, seen so they are left alone), and
// none of another stack's or of a stack whose name starts with this one's.
func TestObserverByStackSeesWhatTheWholeListsSee(t *testing.T) {
	ns := stack.LabelNamespace
	f := &filtering{}
	for i, o := range []struct {
		name   string
		labels map[string]string
	}{
		{"app_db-1", map[string]string{ns: "app"}},
		{"custom-name", map[string]string{ns: "app"}},
		{"app_handmade", nil},
		{"other_db-1", map[string]string{ns: "other"}},
		{"app2_db-1", map[string]string{ns: "app2"}},
		{"apply", map[string]string{ns: "apply"}},
		{"sawmill-agent-name-key", nil},
	} {
		a := swarm.Annotations{Name: o.name, Labels: o.labels}
		f.secrets = append(f.secrets, swarm.Secret{ID: fmt.Sprint("s", i), Spec: swarm.SecretSpec{Annotations: a}})
		f.configs = append(f.configs, swarm.Config{ID: fmt.Sprint("c", i), Spec: swarm.ConfigSpec{Annotations: a}})
	}
	ctx := context.Background()
	whole, err := (Observer{Client: f}).Observe(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	calls := f.calls.Swap(0)
	byStack, err := (Observer{Client: f, ByStack: true}).Observe(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(whole, byStack) {
		t.Fatalf("by stack:\n%+v\nwhole lists:\n%+v", byStack, whole)
	}
	names := func(objs []stack.Object) (n []string) {
		for _, o := range objs {
			n = append(n, o.Name)
		}
		return n
	}
	if want := []string{"app_db-1", "app_handmade", "custom-name"}; !reflect.DeepEqual(names(byStack.Secrets), want) || !reflect.DeepEqual(names(byStack.Configs), want) {
		t.Fatalf("secrets %v, configs %v, want %v", names(byStack.Secrets), names(byStack.Configs), want)
	}
	if calls != 4 || f.calls.Load() != 6 {
		t.Fatalf("calls: %d for the whole lists, %d by stack; want 4 and 6", calls, f.calls.Load())
	}
}
