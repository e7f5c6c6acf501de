package reconcile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/sabeiro/sawmill/internal/report"
)

// state is what the state file keeps across restarts: the last cycle's record, and the reports to GitLab not
// delivered yet, in order.
type state struct {
	Record
	Outbox []report.Outcome `json:"outbox,omitempty"`
	// The releases rolled out (newest first), the pin, and the answer to the last request (history.go).
	History []HistoryEntry `json:"history,omitempty"`
	Pin     *Pin           `json:"pin,omitempty"`
	Answer  *Answer        `json:"answer,omitempty"`
}

// readState reads the state file; a missing file is an empty state. A file that does not parse is moved
// aside (state.json.corrupt-<time>) and reported: the agent starts as if new, which is safe (the next plan
// compares with what runs, and reports again).
func readState(path string, now time.Time) (state, error) {
	var st state
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("state file: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, now.Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return state{}, fmt.Errorf("state file %s is corrupt (%v) and could not be moved aside: %w", path, err, rerr)
		}
		return state{}, fmt.Errorf("state file %s is corrupt (%v): moved to %s; starting without it", path, err, aside)
	}
	return st, nil
}

// writeState replaces the state file atomically and durably: a unique temporary file in the same directory,
// written and synced, renamed over the old one, and the directory synced.
func writeState(path string, st state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	defer os.Remove(f.Name()) // after a successful rename there is nothing left to remove
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("state file: sync %s: %w", dir, err)
	}
	return nil
}

func randFloat() float64 { return rand.Float64() }
