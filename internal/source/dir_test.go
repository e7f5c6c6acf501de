package source

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/manifest"
)

// A release directory whose release.json is larger than manifest.MaxSize is refused, and only MaxSize+1
// bytes of it are read (a release's author chooses its size).
func TestDirRefusesAnOversizedManifest(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, manifest.FileName))
	if err != nil {
		t.Fatal(err)
	}
	// A sparse file of 1 GiB: reading it whole would take 1 GiB of memory.
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = Dir(dir)
	runtime.ReadMemStats(&after)
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 64<<20 {
		t.Errorf("Dir allocated %d MiB for a 1 GiB release.json", allocated>>20)
	}
	if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "more than 4194304 bytes") {
		t.Fatalf("Dir: %v, want invalid input naming the size limit", err)
	}
}
