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
