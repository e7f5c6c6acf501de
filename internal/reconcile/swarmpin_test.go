package reconcile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/source"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func samplePin() *Pin {
	return &Pin{Release: "deployment-12", Commit: "4f6c0e6d1f0c8c8e5d7b7e1c2b2a9f0e6d1c3b4a", Over: "deployment-14", Reason: "v2 breaks checkout",
		Since: time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC), Ref: "main", DeploymentID: 12, JobID: 112}
}

func TestPinEncodingRoundTrips(t *testing.T) {
	b, err := EncodePin(samplePin(), "staging", 3)
	if err != nil {
		t.Fatal(err)
	}
	p, seq, err := DecodePin(b, "staging")
	if err != nil || seq != 3 || !samePin(p, samplePin()) {
		t.Fatalf("decoded %+v seq %d: %v", p, seq, err)
	}
	// A pin of another environment is not this agent's.
	if _, _, err := DecodePin(b, "production"); err == nil || !strings.Contains(err.Error(), "environment") {
		t.Fatalf("another environment's pin: %v", err)
	}
	// The encoder refuses what the decoder would.
	bad := samplePin()
	bad.Reason = "line\nbreak"
	if _, err := EncodePin(bad, "staging", 1); err == nil {
		t.Fatal("a reason with a control character was encoded")
	}
}

// Every way a pin config's data can be wrong is refused, with what is wrong.
func TestPinDecodeRefuses(t *testing.T) {
	good := func(mut func(m map[string]any, p map[string]any)) []byte {
		b, _ := EncodePin(samplePin(), "staging", 1)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		mut(m, m["pin"].(map[string]any))
		out, _ := json.Marshal(m)
		return out
	}
	for _, c := range []struct {
		name, want string
		data       []byte
	}{
		{"too large", "bytes", []byte(`{"reason":"` + strings.Repeat("x", MaxPinSize) + `"}`)},
		{"not JSON", "pin:", []byte("pinned to deployment-12")},
		{"trailing data", "after the JSON", append(good(func(map[string]any, map[string]any) {}), []byte(`{}`)...)},
		{"unknown field", "unknown field", good(func(m, _ map[string]any) { m["extra"] = 1 })},
		{"unknown pin field", "unknown field", good(func(_, p map[string]any) { p["images"] = []string{"x"} })},
		{"schema", "schema", good(func(m, _ map[string]any) { m["schema"] = "sawmill.pin/v9" })},
		{"environment", "environment", good(func(m, _ map[string]any) { m["environment"] = "production" })},
		{"sequence", "sequence", good(func(m, _ map[string]any) { m["seq"] = 0 })},
		{"no pin", "no pin", good(func(m, _ map[string]any) { delete(m, "pin") })},
		{"release key", "release", good(func(_, p map[string]any) { p["release"] = "../../etc" })},
		{"over key", "over", good(func(_, p map[string]any) { p["over"] = "" })},
		{"commit", "commit", good(func(_, p map[string]any) { p["commit"] = "<script>" })},
		{"reason control", "reason", good(func(_, p map[string]any) { p["reason"] = "a\x1b[2Jb" })},
		{"reason length", "reason", good(func(_, p map[string]any) { p["reason"] = strings.Repeat("r", 1025) })},
		{"ref", "ref", good(func(_, p map[string]any) { p["ref"] = "main\r\n" })},
		{"no time", "time", good(func(_, p map[string]any) { delete(p, "since") })},
		{"deployment ID", "disagree", good(func(_, p map[string]any) { p["deployment_id"] = 13 })},
		{"negative job", "negative", good(func(_, p map[string]any) { p["job_id"] = -1 })},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, _, err := DecodePin(c.data, "staging")
			if err == nil || p != nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("DecodePin: %+v, %v; want an error saying %q", p, err, c.want)
			}
		})
	}
}

// FuzzDecodePin: whatever DecodePin accepts encodes back to a pin that decodes the same, with release keys
// as the sources make them and text that carries no control character.
func FuzzDecodePin(f *testing.F) {
	b, _ := EncodePin(samplePin(), "staging", 1)
	f.Add(b)
	f.Add([]byte(`{"schema":"sawmill.pin/v1","environment":"staging","seq":2,"pin":{"release":"commit-aaaaaaa1","over":"git-bbbbbbb2","reason":"","since":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"schema":"sawmill.pin/v1","environment":"staging","seq":1,"pin":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, seq, err := DecodePin(data, "staging")
		if err != nil {
			if p != nil {
				t.Fatal("a pin and an error")
			}
			return
		}
		if !releaseKeyRe.MatchString(p.Release) || !releaseKeyRe.MatchString(p.Over) || !cleanText(p.Reason, maxPinText) {
			t.Fatalf("accepted %+v", p)
		}
		again, err := EncodePin(p, "staging", seq)
		if err != nil {
			t.Fatalf("an accepted pin does not encode: %v", err)
		}
		q, seq2, err := DecodePin(again, "staging")
		if err != nil || seq2 != seq || !samePin(p, q) {
			t.Fatalf("round trip: %+v %d %v", q, seq2, err)
		}
	})
}

// countingConfigs counts the list calls made to the engine.
type countingConfigs struct {
	*client.Client
	lists atomic.Int64
}

func (c *countingConfigs) ConfigList(ctx context.Context, o client.ConfigListOptions) (client.ConfigListResult, error) {
	c.lists.Add(1)
	return c.Client.ConfigList(ctx, o)
}

// testPins returns a pin store of a lease name of the test's own on the test swarm, removed at the end.
func testPins(t *testing.T) (*SwarmPins, *countingConfigs) {
	t.Helper()
	dc := testenv.Docker(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "sawmill-test-pin-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		l, _ := dc.ConfigList(context.Background(), client.ConfigListOptions{Filters: make(client.Filters).Add("name", name)})
		for _, c := range l.Items {
			_, _ = dc.ConfigRemove(context.Background(), c.ID, client.ConfigRemoveOptions{})
		}
	})
	cc := &countingConfigs{Client: dc}
	return &SwarmPins{Client: cc, Name: name, Environment: "staging"}, cc
}

func (s *SwarmPins) configNames(t *testing.T) []string {
	t.Helper()
	names, err := s.Names(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// On the test swarm: a saved pin reads back; a new pin replaces the old (one config left, the next
// sequence); Save(nil) removes it; the lease's list is used when fresh; a pin that is not the agent's, or
// unreadable, is an error.
func TestSwarmPinsOnTheSwarm(t *testing.T) {
	pins, cc := testPins(t)
	ctx := context.Background()
	if p, err := pins.Load(ctx); err != nil || p != nil {
		t.Fatalf("no pin yet: %+v %v", p, err)
	}
	if err := pins.Save(ctx, samplePin()); err != nil {
		t.Fatal(err)
	}
	second := samplePin()
	second.Release, second.DeploymentID, second.Reason = "deployment-13", 13, "again"
	if err := pins.Save(ctx, second); err != nil {
		t.Fatal(err)
	}
	if names := pins.configNames(t); len(names) != 1 || names[0] != pins.Name+".pin-2" {
		t.Fatalf("pin configs %v, want only %s.pin-2", names, pins.Name)
	}
	if p, err := pins.Load(ctx); err != nil || !samePin(p, second) {
		t.Fatalf("load: %+v %v, want the second pin", p, err)
	}

	// The lease's list, when fresh, is read instead of a call.
	var listed []swarm.Config
	l, _ := cc.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", pins.Name)})
	listed = l.Items
	at := time.Now()
	pins.Listed = func() ([]swarm.Config, time.Time) { return listed, at }
	before := cc.lists.Load()
	if p, err := pins.Load(ctx); err != nil || p == nil || p.Release != "deployment-13" || cc.lists.Load() != before {
		t.Fatalf("load from the lease's list: %+v %v, %d calls", p, err, cc.lists.Load()-before)
	}
	at = time.Now().Add(-time.Minute) // stale: a call of its own
	if _, err := pins.Load(ctx); err != nil || cc.lists.Load() != before+1 {
		t.Fatalf("a stale list was used: %v", err)
	}
	pins.Listed = nil

	if err := pins.Save(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if p, err := pins.Load(ctx); err != nil || p != nil || len(pins.configNames(t)) != 0 {
		t.Fatalf("after unpin: %+v %v %v", p, err, pins.configNames(t))
	}

	// A config of the pin's name that is not the agent's, or whose data does not read: an error.
	create := func(name string, labels map[string]string, data string) {
		if _, err := cc.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{Annotations: swarm.Annotations{Name: name, Labels: labels}, Data: []byte(data)}}); err != nil {
			t.Fatal(err)
		}
	}
	good, _ := EncodePin(samplePin(), "staging", 5)
	create(pins.Name+".pin-5", nil, string(good))
	if _, err := pins.Load(ctx); err == nil || !strings.Contains(err.Error(), "not the agent's") {
		t.Fatalf("an unlabelled pin: %v", err)
	}
	create(pins.Name+".pin-6", map[string]string{stack.LabelOwner: stack.OwnerValue}, "garbage")
	if _, err := pins.Load(ctx); err == nil || !strings.Contains(err.Error(), pins.Name+".pin-6") {
		t.Fatalf("an unreadable pin: %v", err)
	}
	// A pin whose sequence disagrees with its name.
	create(pins.Name+".pin-7", map[string]string{stack.LabelOwner: stack.OwnerValue}, string(good))
	if _, err := pins.Load(ctx); err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Fatalf("a pin of another sequence: %v", err)
	}
	// Names of other leases (the list matches prefixes) are not pins of this one.
	create(pins.Name+"-other.pin-9", map[string]string{stack.LabelOwner: stack.OwnerValue}, "garbage")
	if err := pins.Save(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if p, err := pins.Load(ctx); err != nil || p != nil {
		t.Fatalf("another lease's config counted: %+v %v", p, err)
	}
}

// refetchSource is a dirSource that can also give an earlier release again by its key (as source.Follow
// does from GitLab), counting how often.
type refetchSource struct {
	*dirSource
	releases map[string]func() string
	fetched  atomic.Int64
}

func (s *refetchSource) Release(_ context.Context, key string) (*source.Release, error) {
	s.fetched.Add(1)
	mk, ok := s.releases[key]
	if !ok {
		return nil, source.ErrNoDeployment
	}
	return source.Dir(mk())
}

// Two agents (two loops, two state directories) share the swarm's pin: the one that rolled back pins; the
// other, taking over, holds the pin although it never saw the rollback nor kept the release (it fetches it
// again); a newer release lifts the pin for both; a pin it cannot read stops it rolling anything out.
func TestPinHoldsAcrossLoops(t *testing.T) {
	pins, _ := testPins(t)
	ctx := context.Background()
	src := &dirSource{}
	l1, _ := historyLoop(t, t.TempDir(), src, 5)
	l1.Pins = pins
	state1 := strings.TrimSuffix(l1.StateFile, "/"+StateFileName)
	mkA := func() string { return writeKeptRelease(t, "aaaaaaa1", "registry.example/web:a") }
	src.set(mkA())
	l1.Cycle(ctx)
	src.set(writeKeptRelease(t, "bbbbbbb2", "registry.example/web:b"))
	l1.Cycle(ctx)
	if err := SubmitRequest(state1, &Request{Action: ActionRollback, Reason: "B breaks checkout"}); err != nil {
		t.Fatal(err)
	}
	if rec := l1.Cycle(ctx); rec.Outcome != outcome.Success || rec.Release != "commit-aaaaaaa1" {
		t.Fatalf("rollback: %+v", rec)
	}
	if p, err := pins.Load(ctx); err != nil || p == nil || p.Release != "commit-aaaaaaa1" || p.Over != "commit-bbbbbbb2" || p.Reason != "B breaks checkout" {
		t.Fatalf("the swarm's pin after the rollback: %+v %v", p, err)
	}

	// The second agent, with a source that cannot fetch an earlier release: it does not roll forward to B.
	l2, _ := historyLoop(t, t.TempDir(), src, 5)
	l2.Pins = pins
	rec := l2.Cycle(ctx)
	if rec.Outcome == outcome.Success || ranImage(l2) != "" || !strings.Contains(rec.Reason, "cannot fetch") {
		t.Fatalf("pinned to a release it cannot get: %+v, runs %q", rec, ranImage(l2))
	}
	// With a source that fetches it again: A runs, cycle after cycle, fetched once (then kept).
	rs := &refetchSource{dirSource: src, releases: map[string]func() string{"commit-aaaaaaa1": mkA}}
	l3, _ := historyLoop(t, t.TempDir(), src, 5)
	l3.Source, l3.Pins = rs, pins
	for range 3 {
		if rec := l3.Cycle(ctx); rec.Outcome != outcome.Success || rec.Release != "commit-aaaaaaa1" || ranImage(l3) != "registry.example/web:a@"+digest {
			t.Fatalf("the new leader: %+v, runs %s", rec, ranImage(l3))
		}
	}
	if p := l3.Pinned(); p == nil || p.Release != "commit-aaaaaaa1" || rs.fetched.Load() != 1 {
		t.Fatalf("the new leader's pin %+v, fetched %d times", p, rs.fetched.Load())
	}

	// A newer release lifts the pin in the swarm: the first agent, back, follows it too.
	src.set(writeKeptRelease(t, "ccccccc3", "registry.example/web:c"))
	if rec := l3.Cycle(ctx); rec.Release != "commit-ccccccc3" || l3.Pinned() != nil {
		t.Fatalf("newer release: %+v pin %+v", rec, l3.Pinned())
	}
	if names := pins.configNames(t); len(names) != 0 {
		t.Fatalf("the lifted pin stays in the swarm: %v", names)
	}
	if rec := l1.Cycle(ctx); rec.Release != "commit-ccccccc3" || l1.Pinned() != nil {
		t.Fatalf("the first agent after the lift: %+v pin %+v", rec, l1.Pinned())
	}

	// An unreadable pin: nothing is rolled out, the reason says why.
	if _, err := pins.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: pins.Name + ".pin-1", Labels: map[string]string{stack.LabelOwner: stack.OwnerValue}}, Data: []byte("{")}}); err != nil {
		t.Fatal(err)
	}
	src.set(writeKeptRelease(t, "ddddddd4", "registry.example/web:d"))
	rec = l1.Cycle(ctx)
	if rec.Outcome != outcome.Error || !strings.Contains(rec.Reason, "pin cannot be read") || ranImage(l1) != "registry.example/web:c@"+digest {
		t.Fatalf("an unreadable pin: %+v, runs %s", rec, ranImage(l1))
	}
}
