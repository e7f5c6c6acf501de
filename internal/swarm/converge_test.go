package swarm

import (
	"context"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// oneTaskClient answers the two calls of a convergence check: one replicated service and its one task,
// running since runningAt.
type oneTaskClient struct {
	Client
	svc       swarm.Service
	runningAt time.Time
	looks     int
}

func (c *oneTaskClient) ServiceList(context.Context, client.ServiceListOptions) (client.ServiceListResult, error) {
	c.looks++
	return client.ServiceListResult{Items: []swarm.Service{c.svc}}, nil
}

func (c *oneTaskClient) TaskList(context.Context, client.TaskListOptions) (client.TaskListResult, error) {
	t := swarm.Task{ID: "task1", ServiceID: c.svc.ID, Spec: c.svc.Spec.TaskTemplate, DesiredState: swarm.TaskStateRunning,
		Status: swarm.TaskStatus{State: swarm.TaskStateRunning, Timestamp: c.runningAt}}
	t.CreatedAt = c.runningAt
	return client.TaskListResult{Items: []swarm.Task{t}}, nil
}

// A service without a healthcheck converges once its task has run for the update monitor: the rollout ends
// then, not at the next poll after it (which added up to a poll period to every first deploy).
func TestConvergeEndsWhenTheStabilityWindowEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		one := uint64(1)
		spec := swarm.ServiceSpec{
			Annotations:  swarm.Annotations{Name: "s_web"},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: "web:1"}},
			Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
			UpdateConfig: &swarm.UpdateConfig{Monitor: 5 * time.Second},
		}
		start := time.Now()
		c := &oneTaskClient{svc: swarm.Service{ID: "svc1", Spec: spec}, runningAt: start.Add(300 * time.Millisecond)}
		a := &Applier{Client: c, Log: slog.New(slog.DiscardHandler), Timeout: time.Minute, Poll: 2 * time.Second, MaxTaskFailures: 3, Now: time.Now}
		if f, _ := a.converge(context.Background(), []target{{id: "svc1", name: "s_web", created: true, since: start}}); len(f) != 0 {
			t.Fatalf("failures %v", f)
		}
		if took := time.Since(start); took != 5300*time.Millisecond {
			t.Fatalf("converged after %s, want 5.3s (the task ran at 0.3s, monitor 5s; polls every 2s)", took)
		}
		if c.looks > 4 {
			t.Fatalf("%d looks in 5.3s at a poll of 2s", c.looks)
		}
	})
}

func (c *oneTaskClient) NodeList(context.Context, client.NodeListOptions) (client.NodeListResult, error) {
	return client.NodeListResult{}, nil
}
