package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// agent apply --cache-dir: the second apply of unchanged files reads the cache (its entry is not rewritten)
// and writes nothing; when the cached stack's secret must be created (the stack was removed), apply loads the
// files again and the service reads the secret's real content; no entry holds the value.
func TestApplyCacheDir(t *testing.T) {
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	testenv.Image(t, reg+"/app:v1", "MESSAGE=v1")
	name := randomName("cache")
	t.Cleanup(func() { removeStack(dc, name) })
	const value = "s3cret-cached-7"
	f := fixture{dir: t.TempDir(), reg: reg, port: testenv.FreePort(t), webImage: reg + "/app:v1", apiImage: reg + "/app:v1", secretValue: value}
	file := f.write(t)
	cache := filepath.Join(t.TempDir(), "cache")
	apply := func(what string) agentRun {
		t.Helper()
		r := runAgent(t, dc, "apply", "-c", file, name, "--timeout", "2m", "--cache-dir", cache, "--log-level", "debug")
		if r.code != 0 {
			t.Fatalf("%s: exit %d: %s", what, r.code, r.stderr)
		}
		return r
	}
	// entry returns the one loaded stack's entry; no file of the cache (the plan's comparisons included)
	// holds the secret's value.
	entry := func() os.FileInfo {
		t.Helper()
		es, err := os.ReadDir(cache)
		if err != nil {
			t.Fatal(err)
		}
		var stacks []os.DirEntry
		for _, e := range es {
			b, _ := os.ReadFile(filepath.Join(cache, e.Name()))
			if bytes.Contains(b, []byte(value)) {
				t.Fatalf("the cache file %s holds the secret's value", e.Name())
			}
			if !strings.HasPrefix(e.Name(), "plan-") {
				stacks = append(stacks, e)
			}
		}
		if len(stacks) != 1 {
			t.Fatalf("cache entries: %v", es)
		}
		fi, err := os.Stat(filepath.Join(cache, stacks[0].Name()))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	comparisons := regexp.MustCompile(`plan: service comparisons" reused=(\d+) kept=(\d+)`)

	apply("first apply")
	first := entry()
	if r := apply("second apply"); r.writes != 0 {
		t.Fatalf("second apply made %d write calls", r.writes)
	}
	if !os.SameFile(first, entry()) {
		t.Fatal("the second apply of unchanged files did not answer from the cache (its entry was rewritten)")
	}
	// The second apply compared the services and kept the comparisons; the third reuses every one of them.
	r := apply("third apply")
	m := comparisons.FindStringSubmatch(r.stderr)
	if r.writes != 0 || m == nil || m[1] != m[2] || m[1] == "0" {
		t.Fatalf("third apply: %d write calls, comparisons %q (want all reused):\n%s", r.writes, m, r.stderr)
	}

	// The services and the secret are gone (the network stays): the cached stack has no secret content, so
	// apply loads again and creates it.
	ctx := context.Background()
	ns := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: ns})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs.Items {
		if _, err := dc.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	secrets, err := dc.SecretList(ctx, client.SecretListOptions{Filters: ns})
	if err != nil || len(secrets.Items) != 1 {
		t.Fatalf("secrets of the stack: %v, %v", secrets.Items, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		// Swarm refuses to remove a secret while a task that uses it is still there.
		if _, err := dc.SecretRemove(ctx, secrets.Items[0].ID, client.SecretRemoveOptions{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	r = apply("apply after the services and the secret were removed")
	if !strings.Contains(r.stderr, "loading the compose files again") {
		t.Fatalf("apply did not load again for the secret's content:\n%s", r.stderr)
	}
	web := fmt.Sprintf("http://127.0.0.1:%d", f.port)
	if got := get(t, web+"/secret/db_password"); got != sha(value) {
		t.Fatalf("web sees secret hash %s, want %s", got, sha(value))
	}
	entry()
}
