package swarm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/moby/moby/client"
	"golang.org/x/sync/errgroup"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// Observe reads every object that belongs to the stack: those labelled with its namespace, and those named
// `<stack>_...` (so that objects the agent does not own are seen and left alone).
func Observe(ctx context.Context, r Reader, name string) (*stack.Stack, error) {
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
	g.Go(func() (err error) {
		if secrets, err = r.SecretList(gctx, client.SecretListOptions{}); err != nil {
			err = fmt.Errorf("list secrets: %w", err)
		}
		return err
	})
	g.Go(func() (err error) {
		if configs, err = r.ConfigList(gctx, client.ConfigListOptions{}); err != nil {
			err = fmt.Errorf("list configs: %w", err)
		}
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
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
// networks, secrets, configs), nothing else while they succeed. When a list fails, it asks the engine
// whether it is a manager of an active swarm: an engine that is not one is a fault.Invalid error saying so.
// (The lists fail on such an engine anyway, so the check costs a round trip only on the error path: the
// daemon's no-op cycle is the four lists.)
type Observer struct{ Client Reader }

// Observe reads the stack.
func (o Observer) Observe(ctx context.Context, name string) (*stack.Stack, error) {
	st, err := Observe(ctx, o.Client, name)
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
