package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	mswarm "github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// The daemon logs a stack's decisions when they change, not every cycle of an unchanged release.
func TestDecisionLogLogsChangesOnly(t *testing.T) {
	var buf bytes.Buffer
	d := &decisionLog{log: slog.New(slog.NewTextHandler(&buf, nil))}
	cycle := func(rev string, msgs ...string) *reconcile.Cycle {
		rep := &policy.Report{Stack: "shop", Revision: rev}
		for _, m := range msgs {
			rep.Decisions = append(rep.Decisions, policy.Decision{Kind: policy.Warn, Rule: "r", Service: "web", Message: m})
		}
		return &reconcile.Cycle{Decisions: rep}
	}
	count := func() int { return strings.Count(buf.String(), "policy warn") }
	steps := []struct {
		c    *reconcile.Cycle
		want int
	}{
		{cycle("1", "a", "b"), 2}, // first cycle: every decision
		{cycle("1", "a", "b"), 2}, // unchanged: nothing
		{cycle("1", "a"), 3},      // changed: the new set
		{cycle("2", "a"), 4},      // new policy revision: logged again
		{&reconcile.Cycle{}, 4},   // policies did not run
		{cycle("2", "a"), 4},      // still unchanged
	}
	for i, s := range steps {
		d.show(s.c)
		if got := count(); got != s.want {
			t.Fatalf("step %d: %d decision lines logged in all, want %d:\n%s", i, got, s.want, buf.String())
		}
	}
	other := cycle("2", "a")
	other.Decisions.Stack = "other"
	d.show(other)
	if count() != 5 {
		t.Fatalf("another stack's decisions were not logged:\n%s", buf.String())
	}
}

// The daemon keeps Go's default GC target; the one-shot commands collect less often (docs/benchmarks.md).
func TestGCPercentByCommand(t *testing.T) {
	cases := map[string]int{
		"run --config agent.yaml":      100,
		"--log-level debug run --once": 100,
		"check -c run.yaml run":        400,
		"apply -c compose.yaml":        400,
		"version":                      400,
		"":                             400,
	}
	for args, want := range cases {
		if got := gcPercent(strings.Fields(args)); got != want {
			t.Errorf("%q: GC percent %d, want %d", args, got, want)
		}
	}
}

func TestVersionCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"version"}, deps{stdout: &out, stderr: &errb}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.HasPrefix(out.String(), "agent ") || !strings.Contains(out.String(), "go1.") {
		t.Fatalf("version output %q", out.String())
	}
}

// agent render and agent check print the same with --cache-dir as without, the second time from the cache;
// a load that took a value from the environment is not kept.
func TestCacheDirSameOutput(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(t.TempDir(), "cache")
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte("services:\n  web:\n    image: registry.example/web:${TAG:-1}\n    privileged: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runOut := func(args ...string) (string, int) {
		var out, errb bytes.Buffer
		code := run(context.Background(), args, deps{stdout: &out, stderr: &errb})
		return out.String(), code
	}
	for _, cmd := range [][]string{{"render", "-c", file, "shop"}, {"check", "-c", file, "-o", "json", "shop"}} {
		want, wantCode := runOut(cmd...)
		for i := range 2 {
			got, code := runOut(append(cmd, "--cache-dir", cache)...)
			if got != want || code != wantCode {
				t.Fatalf("%v --cache-dir (run %d): exit %d, output\n%s\nwithout: exit %d\n%s", cmd, i, code, got, wantCode, want)
			}
		}
	}
	es, _ := os.ReadDir(cache)
	if len(es) != 1 {
		t.Fatalf("cache holds %d entries, want 1 (one load, shared by render and check)", len(es))
	}
	t.Setenv("TAG", "2")
	out, _ := runOut("render", "-c", file, "--cache-dir", cache, "shop")
	if !strings.Contains(out, "registry.example/web:2") {
		t.Fatalf("TAG=2 not applied: %s", out)
	}
	if es, _ := os.ReadDir(cache); len(es) != 1 {
		t.Fatalf("a load with a value from the environment was kept: %d entries", len(es))
	}
}

// notManager is an engine outside a swarm: its config list fails, and Info says why.
type notManager struct{ swarm.Client }

func (notManager) Close() error { return nil }
func (notManager) ConfigList(context.Context, client.ConfigListOptions) (client.ConfigListResult, error) {
	return client.ConfigListResult{}, errors.New("Error response from daemon: This node is not a swarm manager.")
}
func (notManager) Info(context.Context, client.InfoOptions) (client.SystemInfoResult, error) {
	return client.SystemInfoResult{Info: system.Info{Swarm: mswarm.Info{LocalNodeState: mswarm.LocalNodeStateInactive}}}, nil
}

// plan and apply against an engine that is not a swarm manager: exit 2 saying how to make one.
func TestNotASwarmManager(t *testing.T) {
	file := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(file, []byte("services:\n  web:\n    image: registry.example/web:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"plan", "apply"} {
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{cmd, "-c", file, "--skip-verify", "--policy-mode", "off", "shop"},
			deps{stdout: &out, stderr: &errb, connect: func() (swarm.Client, error) { return notManager{}, nil }})
		if code != 2 || !strings.Contains(errb.String(), "swarm init") {
			t.Errorf("%s: exit %d, stderr %q; want 2 naming `swarm init`", cmd, code, errb.String())
		}
	}
}
