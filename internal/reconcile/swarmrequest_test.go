package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/stack"
)

var requestTime = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

func sampleRequest() *Request {
	return &Request{ID: "0123456789abcdef", Action: ActionRollback, To: "deployment-12", Reason: "v2 breaks checkout"}
}

func TestRequestEncodingRoundTrips(t *testing.T) {
	for _, r := range []*Request{sampleRequest(), {ID: "fedcba9876543210", Action: ActionRollback}, {ID: "fedcba9876543210", Action: ActionRollback, To: "4f6c0e6"},
		{ID: "fedcba9876543210", Action: ActionUnpin}} {
		b, err := EncodeRequest(r, "staging", requestTime)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRequest(b, "staging")
		if err != nil || *got != *r {
			t.Fatalf("decoded %+v: %v, want %+v", got, err, r)
		}
		if _, err := DecodeRequest(b, "production"); err == nil || !strings.Contains(err.Error(), "environment") {
			t.Fatalf("another environment's request: %v", err)
		}
	}
	// The encoder refuses what the decoder would.
	bad := sampleRequest()
	bad.Reason = "line\nbreak"
	if _, err := EncodeRequest(bad, "staging", requestTime); err == nil {
		t.Fatal("a reason with a control character was encoded")
	}
}

// Every way a request config's data can be wrong is refused, with what is wrong.
func TestRequestDecodeRefuses(t *testing.T) {
	good := func(mut func(m, r map[string]any)) []byte {
		b, _ := EncodeRequest(sampleRequest(), "staging", requestTime)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		mut(m, m["request"].(map[string]any))
		out, _ := json.Marshal(m)
		return out
	}
	for _, c := range []struct {
		name, want string
		data       []byte
	}{
		{"too large", "bytes", []byte(`{"reason":"` + strings.Repeat("x", MaxRequestSize) + `"}`)},
		{"not JSON", "request:", []byte("rollback please")},
		{"trailing data", "after the JSON", append(good(func(_, _ map[string]any) {}), []byte(`{}`)...)},
		{"unknown field", "unknown field", good(func(m, _ map[string]any) { m["run"] = "rm -rf /" })},
		{"unknown request field", "unknown field", good(func(_, r map[string]any) { r["stack"] = "x" })},
		{"schema", "schema", good(func(m, _ map[string]any) { m["schema"] = "sawmill.request/v2" })},
		{"environment", "environment", good(func(m, _ map[string]any) { m["environment"] = "production" })},
		{"no time", "time", good(func(m, _ map[string]any) { delete(m, "time") })},
		{"no request", "none", good(func(m, _ map[string]any) { m["request"] = nil })},
		{"ID", "ID", good(func(_, r map[string]any) { r["id"] = "../x" })},
		{"action", "action", good(func(_, r map[string]any) { r["action"] = "deploy" })},
		{"unpin with a release", "unpin", good(func(_, r map[string]any) { r["action"] = "unpin" })},
		{"target", "neither", good(func(_, r map[string]any) { r["to"] = "deployment-1; rm" })},
		{"upper-case commit", "neither", good(func(_, r map[string]any) { r["to"] = "ABCDEF0" })},
		{"reason control", "reason", good(func(_, r map[string]any) { r["reason"] = "a\x1b[2Jb" })},
		{"reason length", "reason", good(func(_, r map[string]any) { r["reason"] = strings.Repeat("r", 1025) })},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := DecodeRequest(c.data, "staging")
			if err == nil || r != nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("DecodeRequest: %+v, %v; want an error saying %q", r, err, c.want)
			}
		})
	}
}

// An answer round-trips, a long or multi-line reason is made one line and cut; a forged one is refused.
func TestAnswerEncoding(t *testing.T) {
	a := &Answer{ID: "0123456789abcdef", Action: ActionRollback, Release: "deployment-12", Outcome: outcome.Refused,
		Reason: "signature\nmissing" + strings.Repeat("x", 2*maxAnswerReason), Time: requestTime}
	b, err := EncodeAnswer(a, "staging")
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeAnswer(b, "staging")
	if err != nil || got.Outcome != outcome.Refused || len(got.Reason) > maxAnswerReason || !strings.HasPrefix(got.Reason, "signature missing") {
		t.Fatalf("decoded %+v: %v", got, err)
	}
	for _, bad := range []string{
		`{"schema":"sawmill.answer/v1","environment":"staging","answer":{"id":"0123456789abcdef","action":"rollback","outcome":"standby","time":"2026-01-01T00:00:00Z"}}`,
		`{"schema":"sawmill.answer/v1","environment":"staging","answer":{"id":"0123456789abcdef","action":"rollback","outcome":"great","time":"2026-01-01T00:00:00Z"}}`,
		`{"schema":"sawmill.answer/v1","environment":"staging","answer":{"id":"0123456789abcdef","action":"rollback","outcome":"success"}}`,
		`{"schema":"sawmill.answer/v1","environment":"staging","answer":{"id":"x","action":"rollback","outcome":"success","time":"2026-01-01T00:00:00Z"}}`,
	} {
		if a, err := DecodeAnswer([]byte(bad), "staging"); err == nil {
			t.Errorf("accepted %s: %+v", bad, a)
		}
	}
}

// FuzzDecodeRequest: whatever DecodeRequest accepts passes CheckRequest and encodes back to the same request.
func FuzzDecodeRequest(f *testing.F) {
	b, _ := EncodeRequest(sampleRequest(), "staging", requestTime)
	f.Add(b)
	f.Add([]byte(`{"schema":"sawmill.request/v1","environment":"staging","time":"2026-01-01T00:00:00Z","request":{"id":"0123456789abcdef","action":"unpin"}}`))
	f.Add([]byte(`{"schema":"sawmill.request/v1","environment":"staging","time":"2026-01-01T00:00:00Z","request":{"id":"0123456789abcdef","action":"rollback","to":"4f6c0e6d"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data, "staging")
		if err != nil {
			if r != nil {
				t.Fatal("a request and an error")
			}
			return
		}
		if err := CheckRequest(r); err != nil || !cleanText(r.Reason, maxPinText) {
			t.Fatalf("accepted %+v: %v", r, err)
		}
		again, err := EncodeRequest(r, "staging", requestTime)
		if err != nil {
			t.Fatalf("an accepted request does not encode: %v", err)
		}
		if q, err := DecodeRequest(again, "staging"); err != nil || *q != *r {
			t.Fatalf("round trip: %+v %v", q, err)
		}
	})
}

func historyEntry(id int64, at time.Time, o outcome.Outcome) HistoryEntry {
	return HistoryEntry{Release: fmt.Sprintf("deployment-%d", id), DeploymentID: id, Commit: strings.Repeat(fmt.Sprint(id), 40)[:40], Time: at, Outcome: o,
		Images: []string{"registry.example/web:v1@sha256:" + strings.Repeat("a", 64)}, Kept: true}
}

// The shared history: it fits its size (older entries left out), says nothing of Kept, refuses what is
// forged, and merges with an agent's own history newest first.
func TestSharedHistory(t *testing.T) {
	base := requestTime
	var h []HistoryEntry
	for i := int64(100); i >= 1; i-- {
		e := historyEntry(i, base.Add(time.Duration(i)*time.Minute), outcome.Success)
		e.Reason = strings.Repeat("why ", 250) + "\n"
		h = append(h, e)
	}
	b, err := EncodeHistory(h, "staging", 4)
	if err != nil {
		t.Fatal(err)
	}
	got, seq, err := DecodeHistory(b, "staging")
	if err != nil || seq != 4 || len(b) > MaxHistorySize || len(got) == 0 || len(got) >= len(h) || got[0].Release != "deployment-100" || got[0].Kept {
		t.Fatalf("decoded %d entries (of %d, %d bytes), seq %d, first %+v: %v", len(got), len(h), len(b), seq, got[0], err)
	}
	for _, bad := range []func(e *HistoryEntry){
		func(e *HistoryEntry) { e.Release = "../etc" },
		func(e *HistoryEntry) { e.DeploymentID = 7 },
		func(e *HistoryEntry) { e.Outcome = "great" },
		func(e *HistoryEntry) { e.Images = []string{"a b"} },
		func(e *HistoryEntry) { e.Time = time.Time{} },
	} {
		e := historyEntry(3, base, outcome.Success)
		bad(&e)
		b, _ := json.Marshal(historyDoc{Schema: HistorySchema, Environment: "staging", Seq: 1, History: []HistoryEntry{e}})
		if _, _, err := DecodeHistory(b, "staging"); err == nil {
			t.Errorf("accepted %+v", e)
		}
	}

	// Another agent rolled out 1, 2, 3 then back to 1, then 3 again; this one (taking over) saw only 3.
	shared := []HistoryEntry{historyEntry(3, base.Add(5*time.Minute), outcome.Success), historyEntry(1, base.Add(4*time.Minute), outcome.Success),
		historyEntry(3, base.Add(3*time.Minute), outcome.Success), historyEntry(2, base.Add(2*time.Minute), outcome.Failed), historyEntry(1, base.Add(time.Minute), outcome.Success)}
	mine := []HistoryEntry{historyEntry(3, base.Add(6*time.Minute), outcome.Success)}
	if _, err := FindRelease(mine, ""); err == nil {
		t.Fatal("this agent's own history names a previous release")
	}
	merged := mergeHistory(mine, append(shared, shared[0]), t.TempDir())
	if len(merged) != 6 || merged[0].Time != mine[0].Time || merged[1].Kept {
		t.Fatalf("merged %+v", merged)
	}
	if prev, err := FindRelease(merged, ""); err != nil || prev.Release != "deployment-1" {
		t.Fatalf("the previous successful release: %+v %v, want deployment-1", prev, err)
	}
}

// On the test swarm: a request left by a CLI is found in the lease's list (no call of its own when there is
// none), taken once (removed), answered, and the answer read once; a forged request is removed and answered
// as invalid, never acted on; the history is saved and read back.
func TestSwarmRequestsOnTheSwarm(t *testing.T) {
	pins, cc := testPins(t)
	ctx := context.Background()
	listNow := func() []swarm.Config {
		l, err := cc.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", pins.Name)})
		if err != nil {
			t.Fatal(err)
		}
		return l.Items
	}
	var listed []swarm.Config
	pins.Listed = func() ([]swarm.Config, time.Time) { return listed, time.Now() }

	// No request: no call.
	before := cc.lists.Load()
	if r, err := pins.Take(ctx, time.Now()); r != nil || err != nil || pins.Pending() || cc.lists.Load() != before {
		t.Fatalf("no request: %+v %v, %d calls", r, err, cc.lists.Load()-before)
	}

	req := &Request{Action: ActionRollback, Reason: "through the standby"}
	if err := pins.Submit(ctx, req, time.Now()); err != nil {
		t.Fatal(err)
	}
	listed = listNow()
	if !pins.Pending() {
		t.Fatal("the request is not pending")
	}
	got, err := pins.Take(ctx, time.Now())
	if err != nil || got == nil || got.ID != req.ID || got.Reason != req.Reason || !got.shared {
		t.Fatalf("take: %+v %v, want %+v", got, err, req)
	}
	listed = listNow()
	if pins.Pending() {
		t.Fatalf("the request is still in the swarm: %v", listed)
	}
	if a, err := pins.ReadAnswer(ctx, req.ID); a != nil || err != nil {
		t.Fatalf("an answer before the agent answered: %+v %v", a, err)
	}
	if err := pins.Answer(ctx, &Answer{ID: req.ID, Action: ActionRollback, Release: "deployment-1", Outcome: outcome.Success, Reason: "rolled back", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if a, err := pins.ReadAnswer(ctx, req.ID); err != nil || a == nil || a.Release != "deployment-1" || a.Outcome != outcome.Success {
		t.Fatalf("answer: %+v %v", a, err)
	}
	if a, err := pins.ReadAnswer(ctx, req.ID); a != nil || err != nil {
		t.Fatalf("the answer was read twice: %+v %v", a, err)
	}

	// Forged requests: not the agent's, another ID in the data, not a request. Each is removed and answered
	// invalid (the ID from its name), never returned without its error.
	create := func(name string, labels map[string]string, data []byte) {
		if _, err := cc.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{Annotations: swarm.Annotations{Name: name, Labels: labels}, Data: data}}); err != nil {
			t.Fatal(err)
		}
	}
	owner := map[string]string{stack.LabelOwner: stack.OwnerValue}
	good, _ := EncodeRequest(sampleRequest(), "staging", time.Now())
	for _, c := range []struct {
		id, want string
		labels   map[string]string
		data     []byte
	}{
		{"aaaaaaaaaaaaaaaa", "not the agent's", nil, good},
		{"bbbbbbbbbbbbbbbb", "holds request", owner, good},
		{"cccccccccccccccc", "request:", owner, []byte("rollback")},
	} {
		create(pins.requestName(c.id), c.labels, c.data)
		listed = listNow()
		r, err := pins.Take(ctx, time.Now())
		if err == nil || !strings.Contains(err.Error(), c.want) || r == nil || r.ID != c.id {
			t.Fatalf("forged request %s: %+v %v, want an error saying %q", c.id, r, err, c.want)
		}
		if listed = listNow(); pins.Pending() {
			t.Fatalf("forged request %s left in the swarm", c.id)
		}
	}
	create(pins.requestName("not-an-id"), owner, good)
	listed = listNow()
	if r, err := pins.Take(ctx, time.Now()); err == nil || r != nil {
		t.Fatalf("a request named without an ID: %+v %v", r, err)
	}

	// The history: saved, read back from the lease's list, the older one removed.
	h := []HistoryEntry{historyEntry(2, time.Now(), outcome.Success), historyEntry(1, time.Now().Add(-time.Minute), outcome.Success)}
	for range 2 {
		if _, err := pins.SaveHistory(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	listed = listNow()
	before = cc.lists.Load()
	back, seq, err := pins.LoadHistory(ctx)
	if err != nil || seq != 2 || len(back) != 2 || back[1].Release != "deployment-1" || cc.lists.Load() != before {
		t.Fatalf("history: %+v seq %d %v (%d list calls of its own)", back, seq, err, cc.lists.Load()-before)
	}
	if cs, _ := pins.historyConfigs(listed); len(cs) != 1 {
		t.Fatalf("%d history configs, want 1", len(cs))
	}
}
