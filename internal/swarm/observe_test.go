package swarm

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/fault"
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
