package reconcile

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/source"
)

// File names in the agent's state directory.
const (
	// StateFileName is the state file: the last outcome, the outbox, the history, the pin.
	StateFileName = "state.json"
	// RequestFileName is an operator's request to the daemon (agent rollback, agent unpin).
	RequestFileName = "request.json"
	// HistoryDirName holds a copy of every release in the history, one directory each, named HistoryName.
	HistoryDirName = "history"
	// DefaultHistoryKeep is how many releases the history keeps by default.
	DefaultHistoryKeep = 20
	// MaxKeptRelease bounds the size of one release copied into the history; a larger one is listed but
	// cannot be rolled back to.
	MaxKeptRelease = 64 << 20
)

// HistoryEntry is one release the agent rolled out (or tried to), newest first in the history.
type HistoryEntry struct {
	// Release is the release's key (deployment-<id>, commit-<sha>, git-<sha>).
	Release      string `json:"release"`
	Commit       string `json:"commit,omitempty"`
	Ref          string `json:"ref,omitempty"`
	Tag          bool   `json:"tag,omitempty"`
	DeploymentID int64  `json:"deployment_id,omitempty"`
	JobID        int64  `json:"job_id,omitempty"`
	// Pipeline is the link to the pipeline that made the release (release.json's pipeline.url), when known.
	Pipeline string          `json:"pipeline,omitempty"`
	Time     time.Time       `json:"time"`
	Outcome  outcome.Outcome `json:"outcome"`
	Reason   string          `json:"reason,omitempty"`
	// Images are the images deployed, pinned to their digests, sorted.
	Images []string `json:"images,omitempty"`
	// Kept: the release's files are kept in the state directory, so `agent rollback` can re-apply it.
	Kept bool `json:"kept"`
	// Rollback: this rollout was an `agent rollback`.
	Rollback bool `json:"rollback,omitempty"`
}

// Pin holds the environment at a release an operator rolled back to: the daemon applies it, not the
// source's newest release, until the source offers a release other than Over (a newer deployment) or the
// operator unpins.
type Pin struct {
	Release string `json:"release"`
	Commit  string `json:"commit,omitempty"`
	// Over is the source's newest release when the pin was set.
	Over   string    `json:"over"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// Where the pinned release came from (its GitLab variables are read for its ref).
	Ref          string `json:"ref,omitempty"`
	Tag          bool   `json:"tag,omitempty"`
	DeploymentID int64  `json:"deployment_id,omitempty"`
	JobID        int64  `json:"job_id,omitempty"`
}

// Request actions.
const (
	ActionRollback = "rollback"
	ActionUnpin    = "unpin"
)

// Request is what `agent rollback` and `agent unpin` ask the daemon, through RequestFileName.
type Request struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	// To is the release (its key or a commit prefix of at least 7 characters); empty: the previous
	// successful release.
	To     string `json:"to,omitempty"`
	Reason string `json:"reason,omitempty"`
	// shared: the request came through the swarm (SwarmPins.Take), and is answered there.
	shared bool
}

// Answer is the daemon's answer to the last request, in the state file.
type Answer struct {
	ID      string          `json:"id"`
	Action  string          `json:"action"`
	Release string          `json:"release,omitempty"`
	Outcome outcome.Outcome `json:"outcome"`
	Reason  string          `json:"reason,omitempty"`
	Time    time.Time       `json:"time"`
}

// Saved is what the state file says about history, pin and requests; ReadSaved reads it.
type Saved struct {
	Record
	History []HistoryEntry `json:"history,omitempty"`
	Pin     *Pin           `json:"pin,omitempty"`
	Answer  *Answer        `json:"answer,omitempty"`
}

// ReadSaved reads the state file of stateDir without changing it (the CLI's commands: agent history,
// rollback, unpin). A missing file is an empty state.
func ReadSaved(stateDir string) (Saved, error) {
	var s Saved
	b, err := os.ReadFile(filepath.Join(stateDir, StateFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("state file: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("state file %s: %w", filepath.Join(stateDir, StateFileName), err)
	}
	return s, nil
}

// HistoryName is the directory name of a kept release in the history directory: derived from its key by a
// hash, so a release (untrusted input) never chooses a path.
func HistoryName(release string) string {
	h := sha256.Sum256([]byte(release))
	return "r-" + hex.EncodeToString(h[:12])
}

// FindRelease returns the history entry that to names: a release key, or a commit (a prefix of at least 7
// hex characters); the newest entry when several match. Empty to: the previous successful release, the
// newest successful one other than the newest successful release (the one that runs).
func FindRelease(history []HistoryEntry, to string) (HistoryEntry, error) {
	if to == "" {
		var current string
		for _, h := range history {
			if h.Outcome != outcome.Success {
				continue
			}
			if current == "" {
				current = h.Release
			} else if h.Release != current {
				return h, nil
			}
		}
		return HistoryEntry{}, errors.New("the history has no earlier successful release")
	}
	for _, h := range history {
		if h.Release == to || (len(to) >= 7 && strings.HasPrefix(h.Commit, strings.ToLower(to))) {
			return h, nil
		}
	}
	return HistoryEntry{}, fmt.Errorf("release %q is not in the history (agent history lists it)", to)
}

// SubmitRequest writes req as the request file of stateDir, only if no request is pending: the file appears
// whole (written aside, then linked), and at most one request waits at a time. It fills req.ID.
func SubmitRequest(stateDir string, req *Request) error {
	req.ID = NewRequestID()
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(stateDir, RequestFileName+".tmp-*")
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("request: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if err := os.Link(f.Name(), filepath.Join(stateDir, RequestFileName)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("another request is pending (%s): %w", filepath.Join(stateDir, RequestFileName), err)
		}
		return fmt.Errorf("request: %w", err)
	}
	return nil
}

// NewRequestID returns a random request ID (16 hex digits).
func NewRequestID() string {
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	return hex.EncodeToString(id)
}

// takeRequest reads and removes the request file; nil when there is none. A request that does not parse
// is removed and reported.
func takeRequest(path string) (*Request, error) {
	if path == "" {
		return nil, nil
	}
	b, err := readCapped(path, 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if rerr := os.Remove(path); rerr != nil && err == nil {
		return nil, fmt.Errorf("request file: %w", rerr)
	}
	if err != nil {
		return nil, fmt.Errorf("request file: %w", err)
	}
	var req Request
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("request file: %w", err)
	}
	if req.Action != ActionRollback && req.Action != ActionUnpin {
		return &req, fmt.Errorf("request file: unknown action %q", req.Action)
	}
	return &req, nil
}

func readCapped(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// keepRelease copies the release directory into the history directory (HistoryName of key), unless it is
// there already: regular files only, a link only when it resolves inside the release, at most
// MaxKeptRelease bytes in all. The copy is written aside and renamed into place.
func keepRelease(historyDir, key, from string) error {
	dst := filepath.Join(historyDir, HistoryName(key))
	if _, err := os.Stat(filepath.Join(dst, "release.json")); err == nil {
		return nil
	}
	if err := os.MkdirAll(historyDir, 0o700); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	tmp, err := os.MkdirTemp(historyDir, ".tmp-")
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	defer os.RemoveAll(tmp)
	root, err := filepath.EvalSymlinks(from)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	var total int64
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		target := filepath.Join(tmp, rel)
		if d.IsDir() {
			return os.Mkdir(target, 0o700)
		}
		src := p
		if d.Type()&fs.ModeSymlink != 0 {
			if src, err = filepath.EvalSymlinks(p); err != nil {
				return err
			}
			if r, err := filepath.Rel(root, src); err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
				return fmt.Errorf("%s links outside the release", rel)
			}
		}
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", rel)
		}
		if total += fi.Size(); total > MaxKeptRelease {
			return fmt.Errorf("the release is larger than %d bytes", MaxKeptRelease)
		}
		return copyFile(src, target)
	})
	if err != nil {
		return fmt.Errorf("history: keeping release %s: %w", key, err)
	}
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// keptRelease reads a kept release of the history back, re-checked as any release directory is, with where
// it came from.
func keptRelease(historyDir string, h HistoryEntry) (*source.Release, error) {
	if !h.Kept {
		return nil, fmt.Errorf("release %s was not kept (agent history: kept false)", h.Release)
	}
	rel, err := source.Dir(filepath.Join(historyDir, HistoryName(h.Release)))
	if err != nil {
		return nil, fmt.Errorf("kept release %s: %w", h.Release, err)
	}
	rel.DeploymentID, rel.JobID, rel.Ref, rel.Tag = h.DeploymentID, h.JobID, h.Ref, h.Tag
	return rel, nil
}

// trimHistory keeps the newest keep entries and removes the kept copies that no entry left (nor the pin)
// names. It returns the entries kept.
func trimHistory(historyDir string, history []HistoryEntry, keep int, pin *Pin) []HistoryEntry {
	if keep <= 0 {
		keep = DefaultHistoryKeep
	}
	if len(history) <= keep {
		return history
	}
	dropped, history := history[keep:], slices.Clip(history[:keep])
	if historyDir == "" {
		return history
	}
	for _, d := range dropped {
		used := pin != nil && pin.Release == d.Release
		for _, h := range history {
			used = used || h.Release == d.Release
		}
		if !used {
			os.RemoveAll(filepath.Join(historyDir, HistoryName(d.Release)))
		}
	}
	return history
}
