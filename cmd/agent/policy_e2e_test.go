package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// policyOff turns the policy gate off for the end-to-end tests of plan and apply, whose stacks are not meant
// to satisfy the default policies; a test that sets --policy-mode itself keeps it.
func policyOff(args []string) []string {
	if len(args) == 0 || (args[0] != "plan" && args[0] != "apply") {
		return args
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--policy-mode") {
			return args
		}
	}
	return append(append([]string{}, args...), "--policy-mode=off")
}

// TestApplyRefusedByPolicy: a stack that breaks a deny rule is refused with exit 3 before any write call, and
// the swarm is left as it was; in warn mode the same stack deploys and the decisions are printed.
func TestApplyRefusedByPolicy(t *testing.T) {
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	testenv.Image(t, reg+"/app:v1", "MESSAGE=v1")
	name := randomName("pol")
	t.Cleanup(func() { removeStack(dc, name) })
	dir := writeFiles(t, map[string]string{"compose.yaml": fmt.Sprintf(`services:
  web:
    image: %s/app:v1
    privileged: true
    environment:
      API_TOKEN: literal-token-value
    deploy:
      endpoint_mode: dnsrr
`, reg)})
	file := dir + "/compose.yaml"

	before := snapshot(t, dc, name)
	for _, args := range [][]string{
		{"apply", "-c", file, name, "--policy-mode=enforce"},
		{"apply", "-c", file, name, "--policy-mode", "enforce", "-o", "json"},
		{"plan", "-c", file, name, "--policy-mode=enforce"},
	} {
		r := runAgent(t, dc, args...)
		if r.code != 3 || r.writes != 0 {
			t.Fatalf("%v: exit %d with %d writes, want 3 and 0", args, r.code, r.writes)
		}
		if !strings.Contains(r.stderr, "policy denied stack "+name) || !strings.Contains(r.stderr, "[privileged]") || !strings.Contains(r.stderr, "[env_credentials]") {
			t.Fatalf("%v: the error does not name the denies:\n%s", args, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, "literal-token-value") {
			t.Fatal("an environment value was printed")
		}
	}
	if after := snapshot(t, dc, name); after != before {
		t.Fatal("a refused apply changed the swarm")
	}

	// Warn mode: reported, not enforced; the rollout goes on.
	r := runAgent(t, dc, "apply", "-c", file, name, "--policy-mode=warn", "--timeout", "2m")
	if r.code != 0 || r.writes == 0 {
		t.Fatalf("warn mode: exit %d, %d writes", r.code, r.writes)
	}
	if !strings.Contains(r.stdout, "policy deny (warn mode: not enforced) privileged: web:") {
		t.Fatalf("warn mode does not print the decisions:\n%s", r.stdout)
	}
}
