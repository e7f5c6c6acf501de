package swarm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
)

// NameKeyConfig is the Swarm config that holds the swarm's name key: 32 random bytes that key the content
// hashes in secret and config names (stack.ContentHash). Every agent of the swarm reads the same key; it is
// never printed. Whoever can read it can already read every secret (they reach the Docker API).
const NameKeyConfig = "sawmill-agent-name-key"

// NameKeyClient is what NameKey needs of the engine.
type NameKeyClient interface {
	ConfigList(ctx context.Context, o client.ConfigListOptions) (client.ConfigListResult, error)
	ConfigCreate(ctx context.Context, o client.ConfigCreateOptions) (client.ConfigCreateResult, error)
}

// ErrNoNameKey: the swarm has no name key yet and create was false.
var ErrNoNameKey = errors.New("the swarm has no name key yet")

// NameKey returns the swarm's name key. When there is none it makes one if create is set (of two agents
// racing, the second reads the first's), else it returns ErrNoNameKey (`agent plan` writes nothing).
func NameKey(ctx context.Context, c NameKeyClient, create bool) ([]byte, error) {
	for range 2 {
		list, err := c.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", NameKeyConfig)})
		if err != nil {
			return nil, fmt.Errorf("name key: %w", err)
		}
		for _, cfg := range list.Items {
			if cfg.Spec.Name == NameKeyConfig && len(cfg.Spec.Data) >= 32 {
				return cfg.Spec.Data, nil
			}
		}
		if !create {
			return nil, ErrNoNameKey
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("name key: %w", err)
		}
		_, err = c.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: NameKeyConfig, Labels: map[string]string{stack.LabelOwner: stack.OwnerValue}},
			Data:        key,
		}})
		if err == nil {
			return key, nil
		}
		// Another agent created it first: read theirs.
	}
	return nil, fmt.Errorf("name key: the config %s could not be created or read", NameKeyConfig)
}
