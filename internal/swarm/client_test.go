package swarm

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"
)

// infoOnly answers Info; any other call panics (the embedded interface is nil).
type infoOnly struct {
	Reader
	info system.Info
}

func (f infoOnly) Info(context.Context, client.InfoOptions) (client.SystemInfoResult, error) {
	return client.SystemInfoResult{Info: f.info}, nil
}

func TestCheckManagerRefusesClearly(t *testing.T) {
	cases := map[string]struct {
		sw   swarm.Info
		want string
	}{
		"not in a swarm": {swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive}, "swarm init"},
		"worker":         {swarm.Info{LocalNodeState: swarm.LocalNodeStateActive}, "worker"},
	}
	for name, tc := range cases {
		err := CheckManager(context.Background(), infoOnly{info: system.Info{Swarm: tc.sw}})
		if !errors.Is(err, ErrNotManager) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	ok := infoOnly{info: system.Info{Swarm: swarm.Info{LocalNodeState: swarm.LocalNodeStateActive, ControlAvailable: true}}}
	if err := CheckManager(context.Background(), ok); err != nil {
		t.Errorf("manager refused: %v", err)
	}
}
