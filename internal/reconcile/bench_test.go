package reconcile

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/stack"
)

// BenchmarkNoOpCycle50 is the daemon's own work in a no-op cycle of a 50-service release (bench/agent-cycle.sh's
// stack): the memoized load, verify (off, or a verifier that pins every image as a warm cache answers), the
// default policies in warn mode, and the plan against an observation that matches. The swarm's answer is a
// stack read once; the engine's time is bench/agent-cycle.sh's to measure.
func BenchmarkNoOpCycle50(b *testing.B) {
	ctx := context.Background()
	root := b.TempDir()
	dir := filepath.Join(root, "stacks", "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	var y strings.Builder
	y.WriteString("services:\n")
	for i := range 50 {
		fmt.Fprintf(&y, "  s%02d:\n    image: registry.example/svc:1\n    environment: {A: b}\n    deploy: {endpoint_mode: dnsrr, replicas: 1}\n    networks: [n]\n", i)
	}
	y.WriteString("networks: {n: {}}\n")
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(y.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	o := compose.Options{Files: []string{p}, Stack: "bench", Env: []string{}, WorkDir: dir, Root: root, Strict: true}
	for _, verifying := range []bool{false, true} {
		name := "skip-verify"
		if verifying {
			name = "verify"
		}
		b.Run(name, func(b *testing.B) {
			f := &Flow{Load: &MemoLoader{Loader: LoadFunc(compose.Load)}, Differ: &plan.Differ{}, Policy: policy.New(policy.Options{}), PolicyMode: policy.ModeWarn}
			if verifying {
				f.Verify = fakeVerifier{} // every image verified and pinned, as a warm cache answers
			}
			// what the swarm runs: the first cycle's wanted stack, as observed (IDs and versions)
			f.Observe = fakeObserver{}
			c := f.Run(ctx, o)
			if c.Err != nil {
				b.Fatal(c.Err)
			}
			obs := *c.Wanted
			obs.Services = append([]stack.Service(nil), c.Wanted.Services...)
			for i := range obs.Services {
				obs.Services[i].ID, obs.Services[i].Version = fmt.Sprint("id", i), 7
			}
			f.Observe = fakeObserver{observed: &obs}
			b.ReportAllocs()
			for b.Loop() {
				if c := f.Run(ctx, o); c.Err != nil || c.Plan.Writes() {
					b.Fatalf("err %v, writes %v", c.Err, c.Plan.Writes())
				}
			}
		})
	}
}
