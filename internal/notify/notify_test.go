package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sabeiro/sawmill/internal/redact"
)

// receiver is a local HTTP server that records what it is sent and answers with the codes it is given
// (then 200).
type receiver struct {
	mu     sync.Mutex
	bodies [][]byte
	codes  []int
	srv    *httptest.Server
}

func newReceiver(t *testing.T, codes ...int) *receiver {
	r := &receiver{codes: codes}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, b)
		code := 200
		if len(r.codes) > 0 {
			code, r.codes = r.codes[0], r.codes[1:]
		}
		r.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.bodies...)
}

func (r *receiver) events(t *testing.T) []Event {
	t.Helper()
	var out []Event
	for _, b := range r.got() {
		var e Event
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("body %s: %v", b, err)
		}
		out = append(out, e)
	}
	return out
}

// newNotifier makes a notifier of one target for a test bubble: the client keeps no idle connections (a
// kept-alive connection's reader would never be durably blocked, and the bubble's clock would stop).
func newNotifier(t *testing.T, targets []Target, log io.Writer, rnd func() float64) *Notifier {
	t.Helper()
	if log == nil {
		log = io.Discard
	}
	n, err := New(Options{
		Environment: "production",
		Targets:     targets,
		Redact:      redact.New("hunter2-secret"),
		Log:         slog.New(slog.NewTextHandler(log, nil)),
		Client:      &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second},
		Rand:        rnd,
		Now:         func() time.Time { return time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func half() float64 { return 0.5 }

// N identical failures are one message; the recovery is one message with the count.
func TestRepeatedFailuresAreSentOnceThenTheRecovery(t *testing.T) {
	rcv := newReceiver(t)
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		n := newNotifier(t, []Target{{Name: "ops", Format: "webhook", URL: rcv.srv.URL}}, nil, half)
		n.Start(ctx)
		fail := Cycle{Release: "42", Commit: "abc123", Outcome: "failed", Reason: "shop: service shop_web: task failed", Stacks: []string{"shop"}}
		for range 5 {
			n.Observe(fail)
			synctest.Wait()
		}
		if ev := rcv.events(t); len(ev) != 1 || ev[0].Kind != Failure || ev[0].Count != 1 || ev[0].Stack != "shop" || ev[0].Environment != "production" {
			t.Fatalf("after 5 identical failures the receiver got %+v, want one failure", ev)
		}
		n.Observe(Cycle{Release: "43", Commit: "def456", Outcome: "success"})
		n.Observe(Cycle{Release: "43", Commit: "def456", Outcome: "success"})
		synctest.Wait()
		ev := rcv.events(t)
		if len(ev) != 2 {
			t.Fatalf("after the recovery the receiver got %d messages, want 2: %+v", len(ev), ev)
		}
		if r := ev[1]; r.Kind != Recovery || r.Count != 5 || r.Release != "43" || r.Previous != "failure: "+fail.Reason {
			t.Fatalf("recovery: %+v", r)
		}
		// The state changed: the same failure again is a new message.
		n.Observe(fail)
		synctest.Wait()
		if ev := rcv.events(t); len(ev) != 3 || ev[2].Kind != Failure || ev[2].Count != 1 {
			t.Fatalf("a failure after the recovery: %+v", ev)
		}
	})
}

// What a sequence of cycles sends: another problem replaces the one in force (sent at once, with what it
// replaces and its count); an outage or a standby changes nothing; a failure on record when the agent starts
// (Seed) is not sent again, its recovery is; drift put back is sent once for the same services, again after a
// cycle that put nothing back; a target gets only its kinds.
func TestEventsOfCycles(t *testing.T) {
	drift := Cycle{Outcome: "success", Drift: []string{"shop/shop_web"}}
	for name, tc := range map[string]struct {
		on     []Kind
		seed   [2]string
		cycles []Cycle
		ok     func(ev []Event) bool
	}{
		"another problem": {cycles: []Cycle{
			{Outcome: "refused", Reason: "stack shop: policy denies privileged"},
			{Outcome: "error", Reason: "source: GitLab unreachable"},
			{Outcome: "standby", Reason: "agent b holds the lease"},
			{Outcome: "refused", Reason: "stack shop: policy denies privileged"},
			{Outcome: "invalid", Reason: "compose: bad"},
		}, ok: func(ev []Event) bool {
			return len(ev) == 2 && ev[0].Kind == Refusal && ev[1].Kind == Failure &&
				ev[1].Previous == "refusal: stack shop: policy denies privileged" && ev[1].PreviousCount == 2
		}},
		"seeded": {seed: [2]string{"failed", "shop: rollout failed"}, cycles: []Cycle{
			{Outcome: "failed", Reason: "shop: rollout failed"}, {Outcome: "success"},
		}, ok: func(ev []Event) bool { return len(ev) == 1 && ev[0].Kind == Recovery && ev[0].Count == 2 }},
		"drift": {on: []Kind{Drift}, cycles: []Cycle{drift, drift, {Outcome: "refused", Reason: "denied"}, {Outcome: "success"}, drift},
			ok: func(ev []Event) bool {
				return len(ev) == 2 && ev[0].Kind == Drift && ev[0].Stack == "shop" && ev[0].Reason == "put back: shop/shop_web" && ev[1].Kind == Drift
			}},
	} {
		t.Run(name, func(t *testing.T) {
			rcv := newReceiver(t)
			synctest.Test(t, func(t *testing.T) {
				n := newNotifier(t, []Target{{Name: "ops", Format: "webhook", URL: rcv.srv.URL, On: tc.on}}, nil, half)
				n.Start(t.Context())
				if tc.seed[0] != "" {
					n.Seed(tc.seed[0], tc.seed[1])
				}
				for _, c := range tc.cycles {
					n.Observe(c)
				}
				synctest.Wait()
				if ev := rcv.events(t); !tc.ok(ev) {
					t.Fatalf("got %+v", ev)
				}
			})
		})
	}
}

// A receiver answering 500 gets the event again after the backoff (jittered, doubling); a 400 is not retried.
func TestDeliveryIsRetriedWithBackoff(t *testing.T) {
	rcv := newReceiver(t, 500, 503)
	bad := newReceiver(t, 400)
	synctest.Test(t, func(t *testing.T) {
		var log bytes.Buffer
		n := newNotifier(t, []Target{{Name: "ops", Format: "slack", URL: rcv.srv.URL}, {Name: "bad", Format: "slack", URL: bad.srv.URL}}, &log, func() float64 { return 0 })
		n.Start(t.Context())
		n.Observe(Cycle{Outcome: "failed", Reason: "rollout failed"})
		synctest.Wait()
		if len(rcv.got()) != 1 {
			t.Fatalf("first attempt: %d requests", len(rcv.got()))
		}
		// Rand 0: each wait is half the backoff: 500ms, then 1s.
		time.Sleep(499 * time.Millisecond)
		synctest.Wait()
		if len(rcv.got()) != 1 {
			t.Fatalf("retried before the backoff")
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if len(rcv.got()) != 2 {
			t.Fatalf("not retried after the backoff: %d requests", len(rcv.got()))
		}
		time.Sleep(990 * time.Millisecond) // the second request was at 500ms: the next is due at 1.5s
		synctest.Wait()
		if len(rcv.got()) != 2 {
			t.Fatalf("the second wait did not double")
		}
		time.Sleep(20 * time.Millisecond)
		synctest.Wait()
		time.Sleep(time.Hour)
		synctest.Wait()
		got := rcv.got()
		if len(got) != 3 || string(got[2]) != `{"text":"[production] failure: failed: rollout failed"}` {
			t.Fatalf("got %d requests, last %s", len(got), got[len(got)-1])
		}
		if n := len(bad.got()); n != 1 {
			t.Fatalf("a 400 was retried: %d requests", n)
		}
		if strings.Contains(log.String(), rcv.srv.URL) || strings.Contains(log.String(), bad.srv.URL) {
			t.Fatalf("a target URL is in the log:\n%s", log.String())
		}
		if !strings.Contains(log.String(), "notification not sent") || !strings.Contains(log.String(), "400 Bad Request") {
			t.Fatalf("the refused notification is not logged:\n%s", log.String())
		}
	})
}

// The attempts are bounded: a receiver that keeps failing is given up on, and the next event is sent.
func TestDeliveryGivesUp(t *testing.T) {
	codes := make([]int, 8)
	for i := range codes {
		codes[i] = 500
	}
	rcv := newReceiver(t, codes...)
	synctest.Test(t, func(t *testing.T) {
		n := newNotifier(t, []Target{{Name: "ops", Format: "webhook", URL: rcv.srv.URL}}, nil, half)
		n.Start(t.Context())
		n.Observe(Cycle{Outcome: "failed", Reason: "one"})
		n.Observe(Cycle{Outcome: "failed", Reason: "two"})
		time.Sleep(time.Hour)
		synctest.Wait()
		ev := rcv.events(t)
		if len(ev) != 9 || ev[7].Reason != "one" || ev[8].Reason != "two" {
			t.Fatalf("got %d requests: %+v", len(ev), ev)
		}
	})
}

// A receiver that hangs never delays the caller, and the queue stays bounded (the oldest events dropped).
func TestHangingReceiverNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, string(b))
		mu.Unlock()
		<-release
	}))
	defer srv.Close()
	n, err := New(Options{Environment: "production", QueueSize: 4, Targets: []Target{{Name: "ops", Format: "slack", URL: srv.URL}}, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.Start(ctx)
	start := time.Now()
	for i := range 500 {
		n.Observe(Cycle{Outcome: "failed", Reason: fmt.Sprintf("failure %d", i)})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("500 cycles took %s with a hanging receiver", d)
	}
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		last := ""
		if len(got) > 0 {
			last = got[len(got)-1]
		}
		count := len(got)
		mu.Unlock()
		if strings.Contains(last, "failure 499") {
			if count > 5 {
				t.Fatalf("the receiver got %d messages: the queue is not bounded to 4 (and one in flight)", count)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the last event never arrived; got %d, last %s", count, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Each format's payload, with a target's own template, and every secret value redacted.
func TestPayloadShapes(t *testing.T) {
	rcv := newReceiver(t)
	tmpl, err := ParseTemplate("t", `{{.Kind}} in {{.Environment}} ({{.Count}}): {{.Reason}}`)
	if err != nil {
		t.Fatal(err)
	}
	synctest.Test(t, func(t *testing.T) {
		var targets []Target
		for _, f := range Formats {
			targets = append(targets, Target{Name: f, Format: f, URL: rcv.srv.URL + "/" + f, Template: tmpl})
		}
		n := newNotifier(t, targets, nil, half)
		n.Start(t.Context())
		n.Observe(Cycle{Release: "7", Commit: "c0ffee", Outcome: "refused", Reason: "variable DB=hunter2-secret denied", Stacks: []string{"shop"}})
		synctest.Wait()
	})
	bodies := map[string]map[string]any{}
	for _, b := range rcv.got() {
		if strings.Contains(string(b), "hunter2-secret") {
			t.Fatalf("a secret value was sent: %s", b)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		switch {
		case m["type"] == "message":
			bodies["teams"] = m
		case m["username"] != nil:
			bodies["mattermost"] = m
		case m["kind"] != nil:
			bodies["webhook"] = m
		default:
			bodies["slack"] = m
		}
	}
	text := "refusal in production (1): variable DB=<redacted> denied"
	if m := bodies["slack"]; len(m) != 1 || m["text"] != text {
		t.Errorf("slack: %v", m)
	}
	if m := bodies["mattermost"]; m["text"] != text || m["username"] != "sawmill-agent" {
		t.Errorf("mattermost: %v", m)
	}
	w := bodies["webhook"]
	if w["text"] != text || w["kind"] != "refusal" || w["environment"] != "production" || w["stack"] != "shop" || w["release"] != "7" ||
		w["commit"] != "c0ffee" || w["outcome"] != "refused" || w["count"] != 1.0 || w["time"] != "2026-11-30T05:00:00Z" {
		t.Errorf("webhook: %v", w)
	}
	b, _ := json.Marshal(bodies["teams"])
	var teams struct {
		Type        string
		Attachments []struct {
			ContentType string
			Content     struct {
				Type string
				Body []struct{ Type, Text string }
			}
		}
	}
	if err := json.Unmarshal(b, &teams); err != nil || len(teams.Attachments) != 1 || teams.Attachments[0].ContentType != "application/vnd.microsoft.card.adaptive" ||
		teams.Attachments[0].Content.Type != "AdaptiveCard" || teams.Attachments[0].Content.Body[0].Text != text {
		t.Errorf("teams: %s", b)
	}
}

func TestTemplateErrorsAreFoundWhenParsed(t *testing.T) {
	for _, s := range []string{`{{.Nope}}`, `{{.Kind`, `{{template "x"}}`} {
		if _, err := ParseTemplate("t", s); err == nil {
			t.Errorf("%s: no error", s)
		}
	}
	if _, err := ParseTemplate("t", DefaultTemplate); err != nil {
		t.Fatal(err)
	}
}
