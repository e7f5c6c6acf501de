package startgc

import (
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
)

// The test binary imports the package, so its init ran: without GOGC the collector is off until Restore, and
// Restore sets the command's target.
func TestOffUntilRestore(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set in the environment: TestEnvironmentWins covers it")
	}
	if got := debug.SetGCPercent(-1); got != -1 {
		t.Fatalf("GC percent after init %d, want -1 (off)", got)
	}
	Restore(250)
	if got := debug.SetGCPercent(100); got != 250 {
		t.Fatalf("GC percent after Restore(250) %d, want 250", got)
	}
}

// With GOGC in the environment neither init nor Restore change the runtime's setting.
func TestEnvironmentWins(t *testing.T) {
	if os.Getenv("STARTGC_CHILD") == "1" {
		Restore(250)
		if got := debug.SetGCPercent(100); got != 50 {
			t.Fatalf("GC percent with GOGC=50 %d, want 50", got)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEnvironmentWins$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "STARTGC_CHILD=1", "GOGC=50")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestEnvironmentWins") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// OffWithLimit: without GOGC or GOMEMLIMIT the collector stays off under the soft limit; with GOMEMLIMIT the
// environment's limit stays and the target is percent; with GOGC nothing changes. Each case in a child
// process (the runtime's settings are global).
func TestOffWithLimit(t *testing.T) {
	if c := os.Getenv("STARTGC_LIMIT_CHILD"); c != "" {
		OffWithLimit(64<<20, 400)
		percent := debug.SetGCPercent(100)
		limit := debug.SetMemoryLimit(-1)
		want := map[string][2]int64{"none": {-1, 64 << 20}, "memlimit": {400, 32 << 20}, "gogc": {50, 1<<63 - 1}}[c]
		if int64(percent) != want[0] || limit != want[1] {
			t.Fatalf("%s: GC percent %d, memory limit %d; want %d, %d", c, percent, limit, want[0], want[1])
		}
		return
	}
	for c, env := range map[string][]string{"none": nil, "memlimit": {"GOMEMLIMIT=32MiB"}, "gogc": {"GOGC=50"}} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestOffWithLimit$", "-test.count=1", "-test.v")
		var base []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GOGC=") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
				base = append(base, kv)
			}
		}
		cmd.Env = append(append(base, "STARTGC_LIMIT_CHILD="+c), env...)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestOffWithLimit") {
			t.Fatalf("%s: child: %v\n%s", c, err, out)
		}
	}
}
