// Package swarm is the agent's boundary to the Docker Engine: the narrow interfaces of the calls it makes,
// reading a stack's observed state (Observer), applying a plan, waiting for the rollout to converge (rolling
// it back when it does not), and the lease that elects the one agent that acts on a swarm.
//
// In: a Docker API client (github.com/moby/moby/client satisfies Client), a *plan.Plan. Out: *stack.Stack
// (observed) and a Result. Imports internal/stack, internal/plan, internal/fault and the Docker client and
// API types.
package swarm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// Reader is every read call the agent makes. `agent plan` gets only a Reader.
type Reader interface {
	Close() error
	Info(ctx context.Context, o client.InfoOptions) (client.SystemInfoResult, error)
	ServiceList(ctx context.Context, o client.ServiceListOptions) (client.ServiceListResult, error)
	ServiceInspect(ctx context.Context, id string, o client.ServiceInspectOptions) (client.ServiceInspectResult, error)
	TaskList(ctx context.Context, o client.TaskListOptions) (client.TaskListResult, error)
	NodeList(ctx context.Context, o client.NodeListOptions) (client.NodeListResult, error)
	NetworkList(ctx context.Context, o client.NetworkListOptions) (client.NetworkListResult, error)
	SecretList(ctx context.Context, o client.SecretListOptions) (client.SecretListResult, error)
	ConfigList(ctx context.Context, o client.ConfigListOptions) (client.ConfigListResult, error)
}

// Writer is every write call the agent makes.
type Writer interface {
	ServiceCreate(ctx context.Context, o client.ServiceCreateOptions) (client.ServiceCreateResult, error)
	ServiceUpdate(ctx context.Context, id string, o client.ServiceUpdateOptions) (client.ServiceUpdateResult, error)
	ServiceRemove(ctx context.Context, id string, o client.ServiceRemoveOptions) (client.ServiceRemoveResult, error)
	NetworkCreate(ctx context.Context, name string, o client.NetworkCreateOptions) (client.NetworkCreateResult, error)
	NetworkRemove(ctx context.Context, id string, o client.NetworkRemoveOptions) (client.NetworkRemoveResult, error)
	SecretCreate(ctx context.Context, o client.SecretCreateOptions) (client.SecretCreateResult, error)
	SecretRemove(ctx context.Context, id string, o client.SecretRemoveOptions) (client.SecretRemoveResult, error)
	ConfigCreate(ctx context.Context, o client.ConfigCreateOptions) (client.ConfigCreateResult, error)
	ConfigRemove(ctx context.Context, id string, o client.ConfigRemoveOptions) (client.ConfigRemoveResult, error)
	// ConfigUpdate changes labels only (Swarm keeps config data immutable); the lease uses it.
	ConfigUpdate(ctx context.Context, id string, o client.ConfigUpdateOptions) (client.ConfigUpdateResult, error)
}

// Client reads and writes.
type Client interface {
	Reader
	Writer
}

var _ Client = (*client.Client)(nil)

// Connect returns a client for the engine the usual Docker environment names (DOCKER_HOST, DOCKER_TLS_VERIFY,
// DOCKER_CERT_PATH, DOCKER_API_VERSION), with API-version negotiation and a one-minute deadline per call.
// certPath is $DOCKER_CERT_PATH, passed in by the command (this package reads no environment of its own).
func Connect(certPath string) (*client.Client, error) {
	opts := []client.Opt{client.FromEnv, client.WithTimeout(time.Minute)}
	if certPath == "" {
		// With DOCKER_CERT_PATH, FromEnv makes its own TLS transport, with the client's defaults.
		opts = append(Pool(), opts...)
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return c, nil
}

// Pool are the client options of Connect's connections without TLS (the default host; a later WithHost or
// FromEnv names another). An observation asks for its lists at once (four; six with ByStack), and Go's
// transport keeps two idle connections per host, so every daemon cycle dialled the engine again for the
// others: the pool keeps eight. The scheme is http: the client would take the TLS settings that cloning a
// transport adds for HTTP/2 for https. bench/agentcycle times its bare calls through the same pool.
func Pool() []client.Opt {
	hc := &http.Client{CheckRedirect: client.CheckRedirect, Transport: &http.Transport{
		MaxIdleConns: idleConns, MaxIdleConnsPerHost: idleConns, IdleConnTimeout: 30 * time.Second}}
	return []client.Opt{client.WithHTTPClient(hc), client.WithHost(client.DefaultDockerHost), client.WithScheme("http")}
}

// idleConns is how many connections to the engine the client keeps open between calls: more than the calls
// the agent makes at once.
const idleConns = 8

// ErrNotManager means the engine is not a manager of an active swarm.
var ErrNotManager = errors.New("the Docker engine is not a swarm manager")

// CheckManager returns an error wrapping ErrNotManager unless the engine is a manager of an active swarm.
func CheckManager(ctx context.Context, r Reader) error {
	info, err := r.Info(ctx, client.InfoOptions{})
	if err != nil {
		return fmt.Errorf("docker engine: %w", err)
	}
	sw := info.Info.Swarm
	if sw.LocalNodeState != swarm.LocalNodeStateActive {
		return fmt.Errorf("%w: swarm state is %q (run `docker swarm init` or join a swarm)", ErrNotManager, sw.LocalNodeState)
	}
	if !sw.ControlAvailable {
		return fmt.Errorf("%w: this node is a worker; run the agent on a manager", ErrNotManager)
	}
	return nil
}
