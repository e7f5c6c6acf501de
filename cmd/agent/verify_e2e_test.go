package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// A signed stack deploys pinned to the verified digests; a stack with one unsigned image exits 3 and the
// swarm is untouched.
func TestApplyVerifiesSignatures(t *testing.T) {
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	key := testenv.NewKey(t)
	_, signed := testenv.Image(t, reg+"/app:signed", "MESSAGE=signed")
	key.Sign(t, reg+"/app@"+signed)
	testenv.Image(t, reg+"/app:unsigned", "MESSAGE=unsigned")

	dir := t.TempDir()
	trust := filepath.Join(dir, "trust.yaml")
	pem := strings.ReplaceAll(strings.TrimSpace(key.PublicPEM), "\n", "\n            ")
	writeFile(t, trust, fmt.Sprintf(`trust:
  rules:
    - pattern: "%s/**"
      mode: enforce
      authorities:
        - name: test-key
          key: |
            %s
`, reg, pem))
	name := randomName("e2esig")
	t.Cleanup(func() { removeStack(dc, name) })
	compose := func(images ...string) string {
		var b strings.Builder
		b.WriteString("services:\n")
		for i, img := range images {
			fmt.Fprintf(&b, "  s%d:\n    image: %s\n    deploy: {endpoint_mode: dnsrr}\n", i, img)
		}
		p := filepath.Join(dir, "compose.yaml")
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	r := runAgent(t, dc, "apply", "--trust", trust, "--policy-mode", "off", "-c", compose(reg+"/app:signed"), name, "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("signed stack: exit %d", r.code)
	}
	if !strings.Contains(r.stdout, "image "+reg+"/app:signed: verified "+signed+" signed by test-key") {
		t.Fatalf("plan output does not show the verified digest and signer:\n%s", r.stdout)
	}
	svc, err := dc.ServiceInspect(context.Background(), name+"_s0", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := svc.Service.Spec.TaskTemplate.ContainerSpec.Image, reg+"/app:signed@"+signed; got != want {
		t.Fatalf("deployed %s, want the verified digest %s", got, want)
	}
	// Re-applying the same tag is a no-op: the pinned spec matches.
	if r := runAgent(t, dc, "apply", "--trust", trust, "--policy-mode", "off", "-c", compose(reg+"/app:signed"), name); r.code != 0 || r.writes != 0 {
		t.Fatalf("re-apply: exit %d, %d writes", r.code, r.writes)
	}

	// Drift: someone bypasses the agent (`docker service update --image`), keeping the labels, which claim
	// nothing. plan reports it; apply puts the verified digest back.
	spec := svc.Service.Spec
	spec.TaskTemplate.ContainerSpec.Image = reg + "/app:unsigned"
	if _, err := dc.ServiceUpdate(context.Background(), svc.Service.ID, client.ServiceUpdateOptions{Version: svc.Service.Version, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	r = runAgent(t, dc, "plan", "--trust", trust, "--policy-mode", "off", "-c", compose(reg+"/app:signed"), name)
	if r.code != 0 || !strings.Contains(r.stdout, "drift") || !strings.Contains(r.stdout, "app:unsigned -> "+reg+"/app:signed@"+signed) {
		t.Fatalf("plan does not report the drift:\n%s", r.stdout)
	}
	if r := runAgent(t, dc, "apply", "--trust", trust, "--policy-mode", "off", "-c", compose(reg+"/app:signed"), name, "--timeout", "2m"); r.code != 0 {
		t.Fatalf("apply after drift: exit %d", r.code)
	}
	svc, _ = dc.ServiceInspect(context.Background(), name+"_s0", client.ServiceInspectOptions{})
	if got := svc.Service.Spec.TaskTemplate.ContainerSpec.Image; got != reg+"/app:signed@"+signed {
		t.Fatalf("after apply the service runs %s, want the verified digest back", got)
	}

	// A change that *adds* something (a bind mount of /, a capability, LD_PRELOAD) is drift too, and put back.
	svc, _ = dc.ServiceInspect(context.Background(), name+"_s0", client.ServiceInspectOptions{})
	spec = svc.Service.Spec
	cs := *spec.TaskTemplate.ContainerSpec
	cs.Mounts = append(cs.Mounts, mount.Mount{Type: mount.TypeBind, Source: "/", Target: "/host", ReadOnly: true})
	cs.CapabilityAdd = append(cs.CapabilityAdd, "CAP_SYS_ADMIN")
	cs.Env = append(cs.Env, "LD_PRELOAD=/host/tmp/evil.so")
	spec.TaskTemplate.ContainerSpec = &cs
	if _, err := dc.ServiceUpdate(context.Background(), svc.Service.ID, client.ServiceUpdateOptions{Version: svc.Service.Version, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	r = runAgent(t, dc, "plan", "--trust", trust, "--policy-mode", "off", "-c", compose(reg+"/app:signed"), name)
	if r.code != 0 || !strings.Contains(r.stdout, "drift") || !strings.Contains(r.stdout, "TaskTemplate.ContainerSpec.Mounts") ||
		!strings.Contains(r.stdout, "TaskTemplate.ContainerSpec.CapabilityAdd") || !strings.Contains(r.stdout, "TaskTemplate.ContainerSpec.Env") {
		t.Fatalf("plan does not report the added fields as drift:\n%s", r.stdout)
	}
	if r := runAgent(t, dc, "apply", "--trust", trust, "--policy-mode", "off", "-c", compose(reg+"/app:signed"), name, "--timeout", "2m"); r.code != 0 {
		t.Fatalf("apply after added-field drift: exit %d", r.code)
	}
	svc, _ = dc.ServiceInspect(context.Background(), name+"_s0", client.ServiceInspectOptions{})
	if c := svc.Service.Spec.TaskTemplate.ContainerSpec; len(c.Mounts) != 0 || len(c.CapabilityAdd) != 0 || slices.ContainsFunc(c.Env, func(e string) bool { return strings.HasPrefix(e, "LD_PRELOAD") }) {
		t.Fatalf("after apply the added fields are still there: %+v", c)
	}

	// Five services, one image unsigned: the whole stack is refused, nothing written.
	snap := snapshot(t, dc, name)
	imgs := []string{reg + "/app:signed", reg + "/app:signed", reg + "/app:unsigned", reg + "/app:signed", reg + "/app:signed"}
	r = runAgent(t, dc, "apply", "--trust", trust, "--policy-mode", "off", "-c", compose(imgs...), name)
	if r.code != 3 || r.writes != 0 {
		t.Fatalf("unsigned image: exit %d with %d writes, want 3 and 0", r.code, r.writes)
	}
	if !strings.Contains(r.stderr, reg+"/app:unsigned") {
		t.Fatalf("the refusal does not name the unsigned image:\n%s", r.stderr)
	}
	if snapshot(t, dc, name) != snap {
		t.Fatal("a refused stack changed the swarm")
	}
	// agent check sees the same signature results: in production only the unsigned image is denied for it.
	r = runAgent(t, dc, "check", "--trust", trust, "--env", "production", "-c", compose(reg+"/app:signed", reg+"/app:unsigned"), name)
	var sigDenies []string
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "image_signature") {
			sigDenies = append(sigDenies, line)
		}
	}
	if r.code != 3 || len(sigDenies) != 1 || !strings.Contains(sigDenies[0], "app:unsigned") {
		t.Fatalf("check: exit %d, signature decisions %q; want exactly the unsigned image denied", r.code, sigDenies)
	}

	// Without a trust policy nothing is deployed either.
	if r := runAgent(t, dc, "plan", "--trust", "", "-c", compose(reg+"/app:signed"), name); r.code != 2 {
		t.Fatalf("no trust policy: exit %d, want 2", r.code)
	}
}
