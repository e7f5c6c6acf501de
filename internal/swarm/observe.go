package swarm

import (
	"context"
	"fmt"
	"strings"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
)

// Observe reads every object that belongs to the stack: those labelled with its namespace, and those named
// `<stack>_...` (so that objects the agent does not own are seen and left alone).
func Observe(ctx context.Context, r Reader, name string) (*stack.Stack, error) {
	st := &stack.Stack{Name: name}
	mine := func(objName string, labels map[string]string) bool {
		return labels[stack.LabelNamespace] == name || strings.HasPrefix(objName, name+"_")
	}

	svcs, err := r.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	for _, s := range svcs.Items {
		if !mine(s.Spec.Name, s.Spec.Labels) {
			continue
		}
		st.Services = append(st.Services, stack.Service{
			Name: s.Spec.Name, Key: strings.TrimPrefix(s.Spec.Name, name+"_"), Spec: s.Spec,
			ID: s.ID, Version: s.Version.Index, PreviousSpec: s.PreviousSpec, UpdateStatus: s.UpdateStatus,
		})
	}
	nets, err := r.NetworkList(ctx, client.NetworkListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
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
	secrets, err := r.SecretList(ctx, client.SecretListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	for _, s := range secrets.Items {
		if mine(s.Spec.Name, s.Spec.Labels) {
			st.Secrets = append(st.Secrets, stack.Object{Name: s.Spec.Name, Key: s.Spec.Labels[stack.LabelKey], Labels: s.Spec.Labels, Hash: s.Spec.Labels[stack.LabelContentHash], ID: s.ID})
		}
	}
	configs, err := r.ConfigList(ctx, client.ConfigListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list configs: %w", err)
	}
	for _, c := range configs.Items {
		if mine(c.Spec.Name, c.Spec.Labels) {
			st.Configs = append(st.Configs, stack.Object{Name: c.Spec.Name, Key: c.Spec.Labels[stack.LabelKey], Labels: c.Spec.Labels, Hash: c.Spec.Labels[stack.LabelContentHash], ID: c.ID})
		}
	}
	st.Sort()
	return st, nil
}
