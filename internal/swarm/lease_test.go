package swarm

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func TestLeaseOneHolderAndTakeover(t *testing.T) {
	dc := testenv.Docker(t)
	ctx := context.Background()
	name := "sawmill-test-lease-" + time.Now().Format("150405.000")
	t.Cleanup(func() {
		l, _ := dc.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", name)})
		for _, c := range l.Items {
			_, _ = dc.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{})
		}
	})
	var clock atomic.Int64
	clock.Store(time.Now().UnixMilli())
	now := func() time.Time { return time.UnixMilli(clock.Load()) }

	// Eight agents race for a fresh lease, twice: exactly one wins each time.
	agents := make([]*Lease, 8)
	for i := range agents {
		agents[i] = &Lease{Client: dc, Name: name, Holder: string(rune('a' + i)), TTL: 10 * time.Second, Now: now}
	}
	race := func() []string {
		var mu sync.Mutex
		var winners []string
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				held, _, err := a.Acquire(ctx)
				if err != nil {
					t.Error(err)
				}
				if held {
					mu.Lock()
					winners = append(winners, a.Holder)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return winners
	}
	winners := race()
	if len(winners) != 1 {
		t.Fatalf("%d agents hold the new lease: %v", len(winners), winners)
	}
	holder := winners[0]
	if w := race(); len(w) != 1 || w[0] != holder {
		t.Fatalf("while the lease is valid only its holder renews it; holders %v, want [%s]", w, holder)
	}

	// The holder goes away. Just past the TTL only it may take the lease back (for a renewal period: a
	// holder that could not renew while the managers re-elected keeps it); after that the others race
	// again and one takes over.
	clock.Add((11 * time.Second).Milliseconds())
	var others []*Lease
	var gone *Lease
	for _, a := range agents {
		if a.Holder != holder {
			others = append(others, a)
		} else {
			gone = a
		}
	}
	agents = others
	if w := race(); len(w) != 0 {
		t.Fatalf("within a renewal period of the expiry others took the lease: %v", w)
	}
	clock.Add((3 * time.Second).Milliseconds())
	w := race()
	if len(w) != 1 || w[0] == holder {
		t.Fatalf("takeover after expiry: holders %v", w)
	}
	// The holder that went away cannot take it back from the new one.
	if held, _, err := gone.Acquire(ctx); err != nil || held {
		t.Fatalf("the old holder took the lease back from %s (held %v, err %v)", w[0], held, err)
	}
	// The new holder misses its renewals past the TTL but is back within the renewal period: it keeps it.
	clock.Add((12 * time.Second).Milliseconds())
	if w2 := race(); len(w2) != 1 || w2[0] != w[0] {
		t.Fatalf("a holder back within a renewal period of its lease's expiry: holders %v, want [%s]", w2, w[0])
	}

	// Release hands over without waiting for the TTL.
	next := w[0]
	for _, a := range agents {
		if a.Holder == next {
			if err := a.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if w := race(); len(w) != 1 {
		t.Fatalf("after release: holders %v", w)
	}
}
