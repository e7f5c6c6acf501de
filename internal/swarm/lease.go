package swarm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
)

// LeaseClient is what a lease needs of the engine.
type LeaseClient interface {
	ConfigList(ctx context.Context, o client.ConfigListOptions) (client.ConfigListResult, error)
	ConfigCreate(ctx context.Context, o client.ConfigCreateOptions) (client.ConfigCreateResult, error)
	ConfigUpdate(ctx context.Context, id string, o client.ConfigUpdateOptions) (client.ConfigUpdateResult, error)
}

// Lease elects the one agent that acts on a swarm. It is a Swarm config whose labels name the holder and
// when the lease expires; taking or renewing it is an update with the config's version, which the managers'
// Raft log orders, so of two agents racing for it exactly one wins, whichever managers they talk to.
// A holder that goes away loses the lease a renewal period after it expires (until then only the holder
// may take it back), and a standby takes over.
type Lease struct {
	Client LeaseClient
	// Name of the config (default sawmill-agent-lease).
	Name string
	// Holder identifies this agent (hostname and process, say); it must be unique.
	Holder string
	// TTL is how long a lease lasts without renewal (default 30s). Agents' clocks must agree to well within it.
	TTL time.Duration
	Now func() time.Time

	mu       sync.Mutex
	listed   []swarm.Config
	listedAt time.Time
}

// Listed returns the configs whose names start with the lease's name (the lease itself, and the pin that
// internal/reconcile keeps beside it), as the last Acquire's list call returned them, and when it listed them
// (zero: never). Reading the pin from it costs no API call of its own.
func (l *Lease) Listed() ([]swarm.Config, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.listed, l.listedAt
}

const (
	labelLeaseHolder  = "io.sawmill.lease.holder"
	labelLeaseExpires = "io.sawmill.lease.expires"
)

func (l *Lease) defaults() {
	if l.Name == "" {
		l.Name = "sawmill-agent-lease"
	}
	if l.TTL == 0 {
		l.TTL = 30 * time.Second
	}
	if l.Now == nil {
		l.Now = time.Now
	}
}

// Acquire takes or renews the lease once. It returns whether this agent holds it now, and the current
// holder.
func (l *Lease) Acquire(ctx context.Context) (held bool, holder string, err error) {
	l.defaults()
	now := l.Now()
	labels := map[string]string{
		stack.LabelOwner:  stack.OwnerValue,
		labelLeaseHolder:  l.Holder,
		labelLeaseExpires: strconv.FormatInt(now.Add(l.TTL).UnixMilli(), 10),
	}
	list, err := l.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", l.Name)})
	if err != nil {
		return false, "", fmt.Errorf("lease: %w", err)
	}
	l.mu.Lock()
	l.listed, l.listedAt = list.Items, now
	l.mu.Unlock()
	var cur *swarm.Config
	for i := range list.Items {
		if list.Items[i].Spec.Name == l.Name { // the filter matches prefixes
			cur = &list.Items[i]
		}
	}
	if cur == nil {
		_, err := l.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: l.Name, Labels: labels},
			Data:        []byte("sawmill agent lease\n"),
		}})
		if lostRace(err) {
			return false, "", nil // another agent created it first
		}
		if err != nil {
			return false, "", fmt.Errorf("lease: create %s: %w", l.Name, err)
		}
		return true, l.Holder, nil
	}
	holder = cur.Spec.Labels[labelLeaseHolder]
	expires, _ := strconv.ParseInt(cur.Spec.Labels[labelLeaseExpires], 10, 64)
	// For a renewal period past its expiry a lease can be taken back only by its holder: a holder that
	// could not renew while the managers elected a Raft leader (after a partition heals, say) keeps it,
	// rather than whichever agent's write the engines take first once they answer again. A released lease
	// (no holder) is free at once.
	if holder != l.Holder && holder != "" && now.UnixMilli() < expires+l.RenewEvery().Milliseconds() {
		return false, holder, nil
	}
	spec := cur.Spec
	spec.Labels = labels
	if _, err := l.Client.ConfigUpdate(ctx, cur.ID, client.ConfigUpdateOptions{Version: cur.Version, Spec: spec}); lostRace(err) {
		return false, holder, nil // lost the race: the version moved on
	} else if err != nil {
		return false, holder, fmt.Errorf("lease: update %s: %w", l.Name, err)
	}
	return true, l.Holder, nil
}

// lostRace reports whether a write to the lease failed because another agent wrote first (the name exists,
// the version moved on), as opposed to an engine that could not answer: only the first is "not the leader".
func lostRace(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return cerrdefs.IsConflict(err) || cerrdefs.IsAlreadyExists(err) || strings.Contains(msg, "already exists") ||
		strings.Contains(msg, "out of sequence")
}

// Release gives the lease up at once if this agent holds it, so a standby need not wait for the TTL.
func (l *Lease) Release(ctx context.Context) error {
	l.defaults()
	list, err := l.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", l.Name)})
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	for _, c := range list.Items {
		if c.Spec.Name != l.Name || c.Spec.Labels[labelLeaseHolder] != l.Holder {
			continue
		}
		spec := c.Spec
		spec.Labels = map[string]string{stack.LabelOwner: stack.OwnerValue, labelLeaseHolder: "", labelLeaseExpires: "0"}
		if _, err := l.Client.ConfigUpdate(ctx, c.ID, client.ConfigUpdateOptions{Version: c.Version, Spec: spec}); err != nil {
			return fmt.Errorf("lease: release: %w", err)
		}
	}
	return nil
}

// RenewEvery is how often the holder renews the lease while it acts: a third of the TTL.
func (l *Lease) RenewEvery() time.Duration {
	l.defaults()
	return l.TTL / 3
}

// LeaseHolder returns the agent that holds the lease name now, "" when nobody does (no lease, released,
// or expired at now): agent rollback checks that it asks the acting agent.
func LeaseHolder(ctx context.Context, c LeaseClient, name string, now time.Time) (string, error) {
	list, err := c.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", name)})
	if err != nil {
		return "", fmt.Errorf("lease: %w", err)
	}
	for _, cfg := range list.Items {
		if cfg.Spec.Name != name {
			continue
		}
		expires, _ := strconv.ParseInt(cfg.Spec.Labels[labelLeaseExpires], 10, 64)
		if now.UnixMilli() < expires {
			return cfg.Spec.Labels[labelLeaseHolder], nil
		}
	}
	return "", nil
}
