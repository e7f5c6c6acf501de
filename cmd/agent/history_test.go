package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/reconcile"
)

// agent history, rollback and unpin read the daemon's state directory; rollback checks the release before it
// asks, and its exit code says what happened.
func TestHistoryAndRollbackCommands(t *testing.T) {
	// Without the lease the pin is the one agent's own: the commands read and ask its state directory only
	// (with the lease, history and unpin read the swarm's pin: TestPinHoldsAcrossAgents).
	t.Setenv("SAWMILL_LEASE_DISABLED", "true")
	state := t.TempDir()
	writeFile(t, filepath.Join(state, reconcile.StateFileName), `{"time":"2026-11-30T05:00:00Z","release":"deployment-3","outcome":"success",
"history":[
 {"release":"deployment-3","commit":"cccccccccccc33","time":"2026-11-30T05:00:00Z","outcome":"success","images":["reg/web:v3@sha256:c"],"kept":true},
 {"release":"deployment-2","commit":"bbbbbbbbbbbb22","time":"2026-11-30T04:00:00Z","outcome":"success","kept":true},
 {"release":"deployment-1","commit":"aaaaaaaaaaaa11","time":"2026-11-30T03:00:00Z","outcome":"success","kept":false}],
"pin":{"release":"deployment-3","over":"deployment-4","reason":"hotfix","since":"2026-11-30T05:00:00Z"}}`)

	r := runOffline(t, "history", "--state-dir", state)
	if r.code != 0 || !strings.Contains(r.stdout, "pinned to deployment-3") || !strings.Contains(r.stdout, "deployment-2  bbbbbbbbbbbb  success  2026-11-30T04:00:00Z  yes") {
		t.Fatalf("agent history: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// --config names the state directory through its state_dir.
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, cfg, "environment: staging\nstate_dir: "+state+"\n")
	if r := runOffline(t, "history", "--config", cfg); r.code != 0 || !strings.Contains(r.stdout, "pinned to deployment-3") {
		t.Fatalf("agent history --config: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runOffline(t, "history", "--state-dir", state, "--json")
	var out struct {
		Pin     *reconcile.Pin
		History []reconcile.HistoryEntry
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Pin == nil || out.Pin.Reason != "hotfix" || len(out.History) != 3 || out.History[0].Images[0] != "reg/web:v3@sha256:c" {
		t.Fatalf("agent history --json: %v\n%s", err, r.stdout)
	}
	// An empty state directory has no history.
	if r := runOffline(t, "history", "--state-dir", t.TempDir(), "--json"); r.code != 0 || !strings.Contains(r.stdout, `"history": []`) {
		t.Fatalf("empty history: %s", r.stdout)
	}

	if r := runOffline(t, "rollback", "--state-dir", state, "--to", "aaaaaaaa"); r.code != 2 || !strings.Contains(r.stderr, "was not kept") {
		t.Fatalf("rollback to a release not kept: exit %d %s", r.code, r.stderr)
	}
	// The default is the previous successful release; --wait 0 only asks.
	if r := runOffline(t, "rollback", "--state-dir", state, "--wait", "0", "--reason", "checkout broken"); r.code != 0 {
		t.Fatalf("rollback --wait 0: exit %d %s", r.code, r.stderr)
	}
	b, _ := os.ReadFile(filepath.Join(state, reconcile.RequestFileName))
	var req reconcile.Request
	if err := json.Unmarshal(b, &req); err != nil || req.Action != "rollback" || req.To != "deployment-2" || req.Reason != "checkout broken" || req.ID == "" {
		t.Fatalf("request %s: %v", b, err)
	}
	if r := runOffline(t, "unpin", "--state-dir", state, "--wait", "0"); r.code != 1 || !strings.Contains(r.stderr, "another request is pending") {
		t.Fatalf("a second request: exit %d %s", r.code, r.stderr)
	}
	// No daemon answers: exit 1, the request stays queued.
	os.Remove(filepath.Join(state, reconcile.RequestFileName))
	if r := runOffline(t, "unpin", "--state-dir", state, "--wait", "1s"); r.code != 1 || !strings.Contains(r.stderr, "no answer from the daemon") {
		t.Fatalf("no daemon: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(state, reconcile.RequestFileName)); err != nil {
		t.Fatalf("the unanswered request is gone: %v", err)
	}
}
