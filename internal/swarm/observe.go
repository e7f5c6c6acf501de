package swarm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"golang.org/x/sync/errgroup"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// Observe reads every object that belongs to the stack: those labelled with its namespace, and those named
// `<stack>_...` (so that objects the agent does not own are seen and left alone).
func Observe(ctx context.Context, r Reader, name string) (*stack.Stack, error) {
	return observe(ctx, r, name, false)
}

// observe is Observe; byStack lists secrets and configs with the engine's filters (see Observer.ByStack).
func observe(ctx context.Context, r Reader, name string, byStack bool) (*stack.Stack, error) {
	st := &stack.Stack{Name: name}
	mine := func(objName string, labels map[string]string) bool {
		return labels[stack.LabelNamespace] == name || strings.HasPrefix(objName, name+"_")
	}

	// The four lists are independent: ask for them at once.
	var (
		svcs    client.ServiceListResult
		nets    client.NetworkListResult
		secrets client.SecretListResult
		configs client.ConfigListResult
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		if svcs, err = r.ServiceList(gctx, client.ServiceListOptions{}); err != nil {
			err = fmt.Errorf("list services: %w", err)
		}
		return err
	})
	g.Go(func() (err error) {
		if nets, err = r.NetworkList(gctx, client.NetworkListOptions{}); err != nil {
			err = fmt.Errorf("list networks: %w", err)
		}
		return err
	})
	// By stack: the objects labelled with its namespace, and those named with its prefix (the engine's name
	// filter matches prefixes); their union is what mine keeps of the whole list.
	var filters []client.Filters
	if byStack {
		filters = []client.Filters{
			make(client.Filters).Add("label", stack.LabelNamespace+"="+name),
			make(client.Filters).Add("name", name+"_"),
		}
	} else {
		filters = []client.Filters{nil}
	}
	secretLists := make([]client.SecretListResult, len(filters))
	configLists := make([]client.ConfigListResult, len(filters))
	for i, f := range filters {
		g.Go(func() (err error) {
			if secretLists[i], err = r.SecretList(gctx, client.SecretListOptions{Filters: f}); err != nil {
				err = fmt.Errorf("list secrets: %w", err)
			}
			return err
		})
		g.Go(func() (err error) {
			if configLists[i], err = r.ConfigList(gctx, client.ConfigListOptions{Filters: f}); err != nil {
				err = fmt.Errorf("list configs: %w", err)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	secrets.Items, configs.Items = secretLists[0].Items, configLists[0].Items
	if byStack {
		secrets.Items = union(secrets.Items, secretLists[1].Items, func(s swarm.Secret) string { return s.ID })
		configs.Items = union(configs.Items, configLists[1].Items, func(c swarm.Config) string { return c.ID })
	}
	// A network outside the stack (an external one) is named in the wanted spec and the engine resolves it;
	// the engine stores its ID. Name it here (plan.Normalize names the stack's own networks), or every apply
	// would see the service as changed.
	outside := map[string]string{}
	for _, n := range nets.Items {
		if n.Scope != "swarm" || !mine(n.Name, n.Labels) {
			outside[n.ID] = n.Name
		}
	}
	for _, s := range svcs.Items {
		if !mine(s.Spec.Name, s.Spec.Labels) {
			continue
		}
		for i, a := range s.Spec.TaskTemplate.Networks {
			if n, ok := outside[a.Target]; ok {
				s.Spec.TaskTemplate.Networks[i].Target = n
			}
		}
		st.Services = append(st.Services, stack.Service{
			Name: s.Spec.Name, Key: strings.TrimPrefix(s.Spec.Name, name+"_"), Spec: s.Spec,
			ID: s.ID, Version: s.Version.Index, PreviousSpec: s.PreviousSpec, UpdateStatus: s.UpdateStatus,
		})
	}
	for _, n := range nets.Items {
		if n.Scope != "swarm" || !mine(n.Name, n.Labels) {
			continue
		}
		st.Networks = append(st.Networks, stack.Network{
			Name: n.Name, Key: strings.TrimPrefix(n.Name, name+"_"), Driver: n.Driver, Attachable: n.Attachable,
			Internal: n.Internal, Options: n.Options, Labels: n.Labels, ID: n.ID,
		})
	}
	for _, s := range secrets.Items {
		if mine(s.Spec.Name, s.Spec.Labels) {
			st.Secrets = append(st.Secrets, stack.Object{Name: s.Spec.Name, Key: s.Spec.Labels[stack.LabelKey], Labels: s.Spec.Labels, Hash: s.Spec.Labels[stack.LabelContentHash], ID: s.ID})
		}
	}
	for _, c := range configs.Items {
		if mine(c.Spec.Name, c.Spec.Labels) {
			st.Configs = append(st.Configs, stack.Object{Name: c.Spec.Name, Key: c.Spec.Labels[stack.LabelKey], Labels: c.Spec.Labels, Hash: c.Spec.Labels[stack.LabelContentHash], ID: c.ID})
		}
	}
	st.Sort()
	return st, nil
}

// Observer reads stacks through Client for internal/reconcile: one list call per object kind (services,
// networks, secrets, configs), nothing else while they succeed; with ByStack, two for secrets and two for
// configs. When a list fails, it asks the engine
// whether it is a manager of an active swarm: an engine that is not one is a fault.Invalid error saying so.
// (The lists fail on such an engine anyway, so the check costs a round trip only on the error path: the
// daemon's no-op cycle is the four lists.)
type Observer struct {
	Client Reader
	// ByStack lists the stack's secrets and configs with the engine's filters (by its namespace label, and by
	// its name prefix: two calls each, at once) instead of every secret and config of the swarm, which the
	// engine takes longest to answer when the swarm holds many (`agent plan` and `apply`; the daemon keeps one
	// call per kind).
	ByStack bool
}

// Observe reads the stack.
func (o Observer) Observe(ctx context.Context, name string) (*stack.Stack, error) {
	st, err := observe(ctx, o.Client, name, o.ByStack)
	if err != nil {
		if ctx.Err() == nil {
			if cerr := CheckManager(ctx, o.Client); errors.Is(cerr, ErrNotManager) {
				return nil, fault.InvalidErr(cerr)
			}
		}
		return nil, fmt.Errorf("observe stack %s: %w", name, err)
	}
	return st, nil
}

// union is a followed by the items of b whose id a does not hold.
func union[T any](a, b []T, id func(T) string) []T {
	seen := make(map[string]bool, len(a))
	for _, x := range a {
		seen[id(x)] = true
	}
	for _, x := range b {
		if !seen[id(x)] {
			a = append(a, x)
		}
	}
	return a
}
