package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
)

// PinStore keeps the pin where every agent of the swarm finds it, so that a rollback holds whichever agent
// acts (SwarmPins). Load returns nil when the environment is not pinned; Save(nil) removes the pin.
type PinStore interface {
	Load(ctx context.Context) (*Pin, error)
	Save(ctx context.Context, p *Pin) error
}

// PinClient is what SwarmPins needs of the engine.
type PinClient interface {
	ConfigList(ctx context.Context, o client.ConfigListOptions) (client.ConfigListResult, error)
	ConfigCreate(ctx context.Context, o client.ConfigCreateOptions) (client.ConfigCreateResult, error)
	ConfigRemove(ctx context.Context, id string, o client.ConfigRemoveOptions) (client.ConfigRemoveResult, error)
}

// The pin's object in the swarm.
const (
	// PinSchema names the encoding of the pin's config data.
	PinSchema = "sawmill.pin/v1"
	// MaxPinSize bounds a pin config's data; a larger one is unreadable.
	MaxPinSize = 16 << 10
	// LabelPinEnvironment is the label naming the pin's environment.
	LabelPinEnvironment = "io.sawmill.pin.environment"
	// maxPinText bounds the pin's free text (the reason) and maxPinRef its ref.
	maxPinText, maxPinRef = 1024, 255
)

// SwarmPins keeps the pin in the swarm, as a Swarm config named <Name>.pin-<sequence> (Name: the lease's
// name, so that the lease's own list call, which matches names by prefix, returns the pin too). Swarm
// config data cannot change: a new pin is a new config with the next sequence, then the older ones are
// removed; a reader takes the highest sequence, so a crash between the two steps leaves the newest pin in
// force. The data is untrusted input (whoever controls the swarm writes it, as they do the lease): it is
// checked (DecodePin) and a pin that does not pass makes Load fail.
type SwarmPins struct {
	Client PinClient
	// Name is the lease's name; Environment the agent's (a pin of another environment is refused).
	Name, Environment string
	// Listed, when set, gives the configs the lease listed last and when (swarm.Lease.Listed); a list not
	// older than MaxAge (default 10s) is used instead of a call of its own.
	Listed func() ([]swarm.Config, time.Time)
	MaxAge time.Duration
	Now    func() time.Time

	// own is the list this store made itself when the lease's was stale, and when (list).
	own   []swarm.Config
	ownAt time.Time
	// wroteAt is when this store last wrote to the swarm (wrote).
	wroteAt time.Time
	// historySeq is the sequence of the swarm's history this agent last read or wrote (swarmhistory.go).
	historySeq int64
}

// pinDoc is the config data: the schema, the environment, the sequence (also in the name) and the pin.
type pinDoc struct {
	Schema      string `json:"schema"`
	Environment string `json:"environment"`
	Seq         int64  `json:"seq"`
	Pin         *Pin   `json:"pin"`
}

// EncodePin returns the config data of pin p of environment env with sequence seq.
func EncodePin(p *Pin, env string, seq int64) ([]byte, error) {
	b, err := json.Marshal(pinDoc{Schema: PinSchema, Environment: env, Seq: seq, Pin: p})
	if err != nil {
		return nil, fmt.Errorf("pin: %w", err)
	}
	if _, _, err := DecodePin(b, env); err != nil {
		return nil, err
	}
	return b, nil
}

var (
	releaseKeyRe = lazyRegexp(`^(deployment-[1-9][0-9]{0,18}|(commit|git)-[0-9a-f]{7,64})$`)
	commitRe     = lazyRegexp(`^[0-9a-f]{7,64}$`)
)

// DecodePin reads and checks a pin config's data for environment env: at most MaxPinSize bytes, one JSON
// object of PinSchema and nothing after it, no unknown field, the environment env, a positive sequence,
// release keys as the sources make them (a deployment's key agreeing with its ID), a commit in hex, a
// reason and ref of bounded length without control characters, and a time.
func DecodePin(b []byte, env string) (*Pin, int64, error) {
	if len(b) > MaxPinSize {
		return nil, 0, fmt.Errorf("pin: more than %d bytes", MaxPinSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var d pinDoc
	if err := dec.Decode(&d); err != nil {
		return nil, 0, fmt.Errorf("pin: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, 0, errors.New("pin: data after the JSON object")
	}
	p := d.Pin
	switch {
	case d.Schema != PinSchema:
		return nil, 0, fmt.Errorf("pin: schema %q, want %q", d.Schema, PinSchema)
	case d.Environment != env:
		return nil, 0, fmt.Errorf("pin: of environment %q, not %q", d.Environment, env)
	case d.Seq <= 0:
		return nil, 0, fmt.Errorf("pin: sequence %d is not positive", d.Seq)
	case p == nil:
		return nil, 0, errors.New("pin: no pin")
	case !releaseKeyRe.MatchString(p.Release):
		return nil, 0, fmt.Errorf("pin: release %q is not a release key", p.Release)
	case !releaseKeyRe.MatchString(p.Over):
		return nil, 0, fmt.Errorf("pin: over %q is not a release key", p.Over)
	case p.Commit != "" && !commitRe.MatchString(p.Commit):
		return nil, 0, fmt.Errorf("pin: commit %q is not hex", p.Commit)
	case !cleanText(p.Reason, maxPinText):
		return nil, 0, fmt.Errorf("pin: the reason is longer than %d bytes or has control characters", maxPinText)
	case !cleanText(p.Ref, maxPinRef):
		return nil, 0, fmt.Errorf("pin: the ref is longer than %d bytes or has control characters", maxPinRef)
	case p.Since.IsZero():
		return nil, 0, errors.New("pin: no time")
	case p.DeploymentID < 0 || p.JobID < 0:
		return nil, 0, errors.New("pin: a negative ID")
	}
	if id, ok := strings.CutPrefix(p.Release, "deployment-"); ok != (p.DeploymentID != 0) || (ok && id != strconv.FormatInt(p.DeploymentID, 10)) {
		return nil, 0, fmt.Errorf("pin: release %s and deployment ID %d disagree", p.Release, p.DeploymentID)
	}
	return p, d.Seq, nil
}

// cleanText: valid UTF-8, at most n bytes, no control character.
func cleanText(s string, n int) bool {
	return len(s) <= n && utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0
}

// pinName is the name of the pin config with sequence seq.
func (s *SwarmPins) pinName(seq int64) string { return s.Name + ".pin-" + strconv.FormatInt(seq, 10) }

// pinConfigs returns the pin configs among list (exact names <Name>.pin-<n>), with their sequences.
func (s *SwarmPins) pinConfigs(list []swarm.Config) (configs []swarm.Config, seqs []int64) {
	return s.sequenced(list, ".pin-")
}

// sequenced returns the configs of list named <Name><infix><n>, n a positive integer written as such, with
// their sequences.
func (s *SwarmPins) sequenced(list []swarm.Config, infix string) (configs []swarm.Config, seqs []int64) {
	cs, ns := s.named(list, infix)
	for i, c := range cs {
		seq, err := strconv.ParseInt(ns[i], 10, 64)
		if err != nil || seq <= 0 || strconv.FormatInt(seq, 10) != ns[i] {
			continue
		}
		configs, seqs = append(configs, c), append(seqs, seq)
	}
	return configs, seqs
}

func (s *SwarmPins) list(ctx context.Context, fresh bool) ([]swarm.Config, error) {
	if s.Listed != nil && !fresh {
		now, maxAge := time.Now, s.MaxAge
		if s.Now != nil {
			now = s.Now
		}
		if maxAge <= 0 {
			maxAge = 10 * time.Second
		}
		// A list made before this store's last write does not show it: not used.
		if l, at := s.Listed(); !at.IsZero() && now().Sub(at) <= maxAge && at.After(s.wroteAt) {
			return l, nil
		}
		if !s.ownAt.IsZero() && now().Sub(s.ownAt) <= maxAge && s.ownAt.After(s.wroteAt) {
			return s.own, nil // this cycle's own list: the pin, the requests and the history share one call
		}
	}
	// The lease's name as prefix: the pin, the requests, the answers and the history in one call.
	l, err := s.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", s.Name)})
	if err != nil {
		return nil, fmt.Errorf("pin: list the swarm's configs: %w", err)
	}
	if s.Listed != nil {
		s.own, s.ownAt = l.Items, time.Now()
		if s.Now != nil {
			s.ownAt = s.Now()
		}
	}
	return l.Items, nil
}

// Load reads the pin: the config with the highest sequence; nil when there is none. A pin config that is
// not the agent's (no owner label), does not parse or does not pass DecodePin is an error: the caller does
// not roll forward over a pin it cannot read.
func (s *SwarmPins) Load(ctx context.Context) (*Pin, error) {
	l, err := s.list(ctx, false)
	if err != nil {
		return nil, err
	}
	configs, seqs := s.pinConfigs(l)
	best := -1
	for i := range configs {
		if best < 0 || seqs[i] > seqs[best] {
			best = i
		}
	}
	if best < 0 {
		return nil, nil
	}
	c := configs[best]
	if c.Spec.Labels[stack.LabelOwner] != stack.OwnerValue {
		return nil, fmt.Errorf("pin: config %s is not the agent's (no %s=%s label)", c.Spec.Name, stack.LabelOwner, stack.OwnerValue)
	}
	p, seq, err := DecodePin(c.Spec.Data, s.Environment)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", c.Spec.Name, err)
	}
	if seq != seqs[best] {
		return nil, fmt.Errorf("config %s: pin: sequence %d disagrees with the name", c.Spec.Name, seq)
	}
	return p, nil
}

// Save writes p as the swarm's pin (a new config with the next sequence), then removes the older pin
// configs; Save(nil) removes them all.
func (s *SwarmPins) Save(ctx context.Context, p *Pin) error {
	l, err := s.list(ctx, true)
	if err != nil {
		return err
	}
	configs, seqs := s.pinConfigs(l)
	if p != nil {
		next := int64(1)
		for _, q := range seqs {
			next = max(next, q+1)
		}
		data, err := EncodePin(p, s.Environment, next)
		if err != nil {
			return err
		}
		labels := map[string]string{stack.LabelOwner: stack.OwnerValue, LabelPinEnvironment: s.Environment}
		if _, err := s.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: s.pinName(next), Labels: labels}, Data: data}}); err != nil {
			return fmt.Errorf("pin: create %s: %w", s.pinName(next), err)
		}
	}
	defer s.wrote()
	for _, c := range configs {
		if _, err := s.Client.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
			return fmt.Errorf("pin: remove %s: %w", c.Spec.Name, err)
		}
	}
	return nil
}

// wrote records that this store wrote to the swarm now: the lists made before are not used again.
func (s *SwarmPins) wrote() {
	if s.Now != nil {
		s.wroteAt = s.Now()
	} else {
		s.wroteAt = time.Now()
	}
}

// Names lists the names of the swarm's pin configs (one call), without reading them.
func (s *SwarmPins) Names(ctx context.Context) ([]string, error) {
	l, err := s.list(ctx, true)
	if err != nil {
		return nil, err
	}
	configs, _ := s.pinConfigs(l)
	var names []string
	for _, c := range configs {
		names = append(names, c.Spec.Name)
	}
	return names, nil
}
