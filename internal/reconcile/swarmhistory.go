package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/stack"
)

// The history in the swarm: the acting agent writes the history it holds as a Swarm config
// <lease>.history-<sequence> whenever it changes (a release rolled out, or a new outcome of it: never in a
// cycle that changes nothing), and an agent that acts merges the newest one into its own at the start of a
// cycle (read from the lease's list: no API call of its own). So `agent rollback` without --to goes to the
// previous successful release that ran on the swarm, whichever agent rolled it out.
const (
	// HistorySchema names the encoding of the history config's data.
	HistorySchema = "sawmill.history/v1"
	// MaxHistorySize bounds the history config's data: older entries are left out to fit.
	MaxHistorySize = 64 << 10
	// maxSharedEntries bounds the entries, maxSharedImages the images of one entry.
	maxSharedEntries, maxSharedImages = 100, 64
	// maxSharedReason bounds an entry's reason, maxSharedURL its pipeline link and an image reference.
	maxSharedReason, maxSharedURL = 1024, 1024
)

type historyDoc struct {
	Schema      string         `json:"schema"`
	Environment string         `json:"environment"`
	Seq         int64          `json:"seq"`
	History     []HistoryEntry `json:"history"`
}

// EncodeHistory returns the config data of history h of environment env with sequence seq: the newest
// entries that fit MaxHistorySize (at most 100), reasons on one line and cut, Kept left out (it says what
// one agent's state directory holds).
func EncodeHistory(h []HistoryEntry, env string, seq int64) ([]byte, error) {
	out := make([]HistoryEntry, 0, min(len(h), maxSharedEntries))
	for _, e := range h[:min(len(h), maxSharedEntries)] {
		e.Kept = false
		e.Reason = oneLine(e.Reason, maxSharedReason)
		if len(e.Images) > maxSharedImages {
			e.Images = e.Images[:maxSharedImages]
		}
		out = append(out, e)
	}
	for {
		b, err := json.Marshal(historyDoc{Schema: HistorySchema, Environment: env, Seq: seq, History: out})
		if err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
		if len(b) <= MaxHistorySize || len(out) == 0 {
			if _, _, err := DecodeHistory(b, env); err != nil {
				return nil, err
			}
			return b, nil
		}
		out = out[:len(out)-1]
	}
}

// DecodeHistory reads and checks the history config's data for environment env: at most MaxHistorySize
// bytes, one JSON object of HistorySchema, no unknown field, the environment env, a positive sequence, at most
// 100 entries each with a release key (agreeing with its deployment ID), a commit in hex, a known outcome, a
// time, and bounded text without control characters. Kept is false in every entry returned.
func DecodeHistory(b []byte, env string) ([]HistoryEntry, int64, error) {
	var d historyDoc
	if err := readDoc(b, MaxHistorySize, "history", &d, func() (string, string) { return d.Schema, d.Environment }, HistorySchema, env); err != nil {
		return nil, 0, err
	}
	switch {
	case d.Seq <= 0:
		return nil, 0, fmt.Errorf("history: sequence %d is not positive", d.Seq)
	case len(d.History) > maxSharedEntries:
		return nil, 0, fmt.Errorf("history: more than %d entries", maxSharedEntries)
	}
	for i := range d.History {
		if err := checkEntry(&d.History[i]); err != nil {
			return nil, 0, fmt.Errorf("history: entry %d: %w", i+1, err)
		}
		d.History[i].Kept = false
	}
	return d.History, d.Seq, nil
}

func checkEntry(e *HistoryEntry) error {
	switch {
	case !releaseKeyRe.MatchString(e.Release):
		return fmt.Errorf("release %q is not a release key", e.Release)
	case e.Commit != "" && !commitRe.MatchString(e.Commit):
		return fmt.Errorf("commit %q is not hex", e.Commit)
	case !knownOutcome(e.Outcome):
		return fmt.Errorf("outcome %q", e.Outcome)
	case e.Time.IsZero():
		return errors.New("no time")
	case e.DeploymentID < 0 || e.JobID < 0:
		return errors.New("a negative ID")
	case !cleanText(e.Ref, maxPinRef) || !cleanText(e.Reason, maxSharedReason) || !cleanText(e.Pipeline, maxSharedURL):
		return errors.New("a ref, reason or pipeline link too long or with control characters")
	case len(e.Images) > maxSharedImages:
		return fmt.Errorf("more than %d images", maxSharedImages)
	}
	for _, im := range e.Images {
		if im == "" || !cleanText(im, maxSharedURL) || strings.ContainsRune(im, ' ') {
			return fmt.Errorf("image %q", im)
		}
	}
	if id, ok := strings.CutPrefix(e.Release, "deployment-"); ok != (e.DeploymentID != 0) || (ok && id != strconv.FormatInt(e.DeploymentID, 10)) {
		return fmt.Errorf("release %s and deployment ID %d disagree", e.Release, e.DeploymentID)
	}
	return nil
}

func (s *SwarmPins) historyName(seq int64) string {
	return s.Name + ".history-" + strconv.FormatInt(seq, 10)
}

// historyConfigs returns the history configs of list (exact names <Name>.history-<n>) and their sequences.
func (s *SwarmPins) historyConfigs(list []swarm.Config) (configs []swarm.Config, seqs []int64) {
	return s.sequenced(list, ".history-")
}

// LoadHistory reads the swarm's history (the config with the highest sequence) from the lease's last list
// (no call when it is fresh); nil and 0 when there is none. One that is not the agent's or does not pass
// DecodeHistory is an error.
func (s *SwarmPins) LoadHistory(ctx context.Context) ([]HistoryEntry, int64, error) {
	l, err := s.list(ctx, false)
	if err != nil {
		return nil, 0, err
	}
	configs, seqs := s.historyConfigs(l)
	if len(configs) == 0 {
		return nil, 0, nil
	}
	best := 0
	for i := range seqs {
		if seqs[i] > seqs[best] {
			best = i
		}
	}
	c := configs[best]
	if c.Spec.Labels[stack.LabelOwner] != stack.OwnerValue {
		return nil, 0, fmt.Errorf("history: config %s is not the agent's", c.Spec.Name)
	}
	h, seq, err := DecodeHistory(c.Spec.Data, s.Environment)
	if err == nil && seq != seqs[best] {
		err = fmt.Errorf("history: sequence %d disagrees with the name", seq)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("config %s: %w", c.Spec.Name, err)
	}
	return h, seq, nil
}

// SaveHistory writes h as the swarm's history (a new config with the next sequence), then removes the older
// ones. It returns the sequence written.
func (s *SwarmPins) SaveHistory(ctx context.Context, h []HistoryEntry) (int64, error) {
	l, err := s.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", s.Name+".history-")})
	if err != nil {
		return 0, fmt.Errorf("history: list the swarm's configs: %w", err)
	}
	configs, seqs := s.historyConfigs(l.Items)
	next := int64(1)
	for _, q := range seqs {
		next = max(next, q+1)
	}
	data, err := EncodeHistory(h, s.Environment, next)
	if err != nil {
		return 0, err
	}
	labels := map[string]string{stack.LabelOwner: stack.OwnerValue, LabelPinEnvironment: s.Environment}
	if _, err := s.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: s.historyName(next), Labels: labels}, Data: data}}); err != nil {
		return 0, fmt.Errorf("history: create %s: %w", s.historyName(next), err)
	}
	defer s.wrote()
	for _, c := range configs {
		if _, err := s.Client.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
			return next, fmt.Errorf("history: remove %s: %w", c.Spec.Name, err)
		}
	}
	return next, nil
}

// mergeHistory returns the union of this agent's history and the swarm's, newest first (an entry of both
// once), with Kept true for the swarm's entries whose release this agent keeps in historyDir.
func mergeHistory(local, shared []HistoryEntry, historyDir string) []HistoryEntry {
	type k struct {
		release string
		at      int64
		outcome string
	}
	seen := map[k]bool{}
	var out []HistoryEntry
	for _, e := range local {
		seen[k{e.Release, e.Time.UnixNano(), string(e.Outcome)}] = true
		out = append(out, e)
	}
	for _, e := range shared {
		key := k{e.Release, e.Time.UnixNano(), string(e.Outcome)}
		if seen[key] {
			continue
		}
		seen[key] = true
		if historyDir != "" {
			_, err := os.Stat(filepath.Join(historyDir, HistoryName(e.Release), "release.json"))
			e.Kept = err == nil
		}
		out = append(out, e)
	}
	slices.SortStableFunc(out, func(a, b HistoryEntry) int { return b.Time.Compare(a.Time) })
	return out
}

// loadSharedHistory merges the swarm's history into this agent's when it changed since this agent last
// read or wrote it (after a takeover, say). It is advisory: an unreadable one is logged and left alone.
func (l *Loop) loadSharedHistory(ctx context.Context) {
	sp, ok := l.Pins.(*SwarmPins)
	if !ok {
		return
	}
	h, seq, err := sp.LoadHistory(ctx)
	if err != nil {
		l.Log.Warn("the swarm's history cannot be read: agent rollback without --to uses this agent's", "err", err)
		return
	}
	if seq == 0 || seq == sp.historySeq {
		return
	}
	sp.historySeq = seq
	l.mu.Lock()
	merged := trimHistory(l.HistoryDir, mergeHistory(l.history, h, l.HistoryDir), l.HistoryKeep, l.pin)
	changed := !reflect.DeepEqual(merged, l.history)
	l.history = merged
	l.mu.Unlock()
	// Only a history that gained something is written: an agent that reads back what it shared itself (a
	// restart, every `run --once`) leaves its state file alone.
	if changed {
		l.dirty = true
	}
}

// shareHistory writes this agent's history to the swarm after it changed; a failure is logged (the next
// change writes it again).
func (l *Loop) shareHistory() {
	sp, ok := l.Pins.(*SwarmPins)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seq, err := sp.SaveHistory(ctx, l.History())
	if seq > 0 {
		sp.historySeq = seq
	}
	if err != nil {
		l.Log.Error("the history could not be written to the swarm (an agent taking the lease over would not know it)", "err", err)
	}
}

// knownOutcome: o is an outcome of the table.
func knownOutcome(o outcome.Outcome) bool {
	_, ok := outcome.Table[o]
	return ok
}
