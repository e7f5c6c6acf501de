// Package notify tells people what the agent's cycles found: a failure, a recovery, a refusal, drift put
// back. It turns each cycle (a Cycle: the outcome and reason the loop recorded, and the services whose drift
// was put back) into events, folds repeated identical ones, and sends them to the configured targets: a
// generic JSON webhook, Slack, Mattermost or Microsoft Teams (Workflows) incoming webhooks, each with an
// optional text/template over Event.
//
// De-duplication: a failure or refusal is sent when it starts; the same kind with the same reason in the
// cycles after it is counted, not sent, until the state changes: a success (a recovery event, with the
// count), or another failure or refusal (sent, with the count of the one it replaces). Drift put back is
// sent once for the same set of services until a cycle puts back none. An outage (outcome error) and a
// standby change nothing: nothing ran.
//
// Delivery never blocks the caller: Observe classifies and queues (a bounded queue per target; when full,
// the oldest event is dropped and logged), and one goroutine per target sends in order, retrying network
// errors, 5xx, 408 and 429 answers with capped, jittered exponential backoff. Every string of an event and
// every body is redacted (internal/redact) before it is sent; a target's URL is a secret (a Slack or Teams
// webhook URL is its credential) and is never logged.
//
// It imports internal/redact and the standard library.
package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/sabeiro/sawmill/internal/redact"
)

// Kind is what an event says happened.
type Kind string

// The kinds of events.
const (
	// Failure: a rollout failed, or the release is invalid.
	Failure Kind = "failure"
	// Recovery: a cycle succeeded after a failure or refusal.
	Recovery Kind = "recovery"
	// Refusal: signatures or policies refused the release; nothing was touched.
	Refusal Kind = "refusal"
	// Drift: services changed outside the agent were put back.
	Drift Kind = "drift"
)

// Kinds are every kind, in the order the documentation lists them.
var Kinds = []Kind{Failure, Recovery, Refusal, Drift}

// Event is one notification; templates see its fields (`{{.Environment}}`, `{{.Reason}}`, ...).
type Event struct {
	Kind        Kind   `json:"kind"`
	Environment string `json:"environment"`
	// Stack names the stacks concerned, comma-separated: those that failed or were refused, or whose drift
	// was put back; empty when the release as a whole failed (it could not be read, say).
	Stack   string `json:"stack,omitempty"`
	Release string `json:"release,omitempty"`
	Commit  string `json:"commit,omitempty"`
	// Outcome is the cycle's outcome: success, failed, invalid or refused.
	Outcome string `json:"outcome"`
	// Reason is the cycle's reason (redacted): why it failed or was refused; for drift, the services put back.
	Reason string `json:"reason,omitempty"`
	// Count: for a failure, refusal or drift, 1 when it starts; for a recovery, how many cycles the problem
	// it ends lasted; for a problem that replaces another, Previous and PreviousCount say what it replaces.
	Count int `json:"count"`
	// Previous is the problem this event ends or replaces ("failure: <reason>"), PreviousCount how many
	// cycles it lasted.
	Previous      string    `json:"previous,omitempty"`
	PreviousCount int       `json:"previous_count,omitempty"`
	Time          time.Time `json:"time"`
}

// Cycle is what one cycle of the agent found, as the notifier is told it.
type Cycle struct {
	Release, Commit string
	// Outcome is the cycle's outcome (internal/outcome's names), Reason its reason.
	Outcome, Reason string
	// Stacks are the stacks that failed or were refused.
	Stacks []string
	// Drift are the services ("stack/service") whose drift the cycle put back.
	Drift []string
	Time  time.Time
}

// Target is one receiver.
type Target struct {
	// Name names the target in logs (never its URL).
	Name string
	// Format is webhook, slack, mattermost or teams.
	Format string
	URL    string
	// Template renders the text of a message; nil: DefaultTemplate.
	Template *template.Template
	// On are the kinds sent to this target; empty: every kind.
	On []Kind
}

// Formats are the payload formats a target can have.
var Formats = []string{"webhook", "slack", "mattermost", "teams"}

// DefaultTemplate is the text of a message unless a target has its own.
const DefaultTemplate = `[{{.Environment}}] {{.Kind}}{{with .Stack}} {{.}}{{end}}: {{.Outcome}}` +
	`{{with .Release}}, release {{.}}{{end}}{{with .Commit}} ({{.}}){{end}}` +
	`{{if gt .Count 1}}, {{.Count}} cycles{{end}}{{with .Reason}}: {{.}}{{end}}` +
	`{{with .Previous}} (after {{.}}{{if gt $.PreviousCount 1}}, {{$.PreviousCount}} cycles{{end}}){{end}}`

var defaultTemplate = template.Must(ParseTemplate("default", DefaultTemplate))

// ParseTemplate parses a target's template; missing keys are errors, so that a misspelt field is found
// when the configuration is read.
func ParseTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	// Executing it on a sample event finds a misspelt field before the first notification.
	if err := t.Execute(discard{}, Event{Kind: Failure, Count: 1}); err != nil {
		return nil, err
	}
	return t, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Options configure a Notifier.
type Options struct {
	Environment string
	Targets     []Target
	// Redact cleans every string sent; the targets' URLs are added to it.
	Redact *redact.Redactor
	Log    *slog.Logger
	// Client sends the requests (default: a client with the Timeout).
	Client *http.Client
	// Rand returns a number in [0, 1) for the backoff's jitter (default math/rand/v2); Now is the clock of
	// the events (default time.Now).
	Rand func() float64
	Now  func() time.Time
	// QueueSize bounds each target's queue (default 64); Attempts bounds the sends of one event (default 8);
	// the backoff between them doubles from MinBackoff (default 1s) up to MaxBackoff (default 1m), each wait
	// jittered between half and all of it; Timeout bounds one request (default 10s).
	QueueSize              int
	Attempts               int
	MinBackoff, MaxBackoff time.Duration
	Timeout                time.Duration
}

// Notifier classifies cycles into events and sends them. Create it with New, start its senders with Start.
type Notifier struct {
	o       Options
	senders []*sender

	mu      sync.Mutex
	problem *open // the failure or refusal in force
	drift   *open // the drift last sent
}

// open is a problem (or drift) that was sent, and how many cycles it lasted.
type open struct {
	kind   Kind
	key    string
	reason string
	count  int
}

// New checks the targets and returns a Notifier.
func New(o Options) (*Notifier, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Redact == nil {
		o.Redact = redact.New()
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 64
	}
	if o.Attempts <= 0 {
		o.Attempts = 8
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
	o.Targets = slices.Clone(o.Targets) // the defaults below are filled in a copy
	n := &Notifier{o: o}
	for i, t := range o.Targets {
		if !slices.Contains(Formats, t.Format) {
			return nil, fmt.Errorf("notify target %q: format %q: use %s", t.Name, t.Format, strings.Join(Formats, ", "))
		}
		if t.URL == "" {
			return nil, fmt.Errorf("notify target %q: no URL", t.Name)
		}
		o.Redact.Add(t.URL)
		if t.Template == nil {
			o.Targets[i].Template = defaultTemplate
		}
		n.senders = append(n.senders, &sender{n: n, t: o.Targets[i], wake: make(chan struct{}, 1)})
	}
	return n, nil
}

// Start runs one sender per target until ctx ends; what is queued then is not sent.
func (n *Notifier) Start(ctx context.Context) {
	for _, s := range n.senders {
		go s.run(ctx)
	}
}

// Drain waits until every queued event was delivered (or given up on), or ctx ends: `agent run --once`
// sends what its cycle found before it exits.
func (n *Notifier) Drain(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if !slices.ContainsFunc(n.senders, func(s *sender) bool { return !s.idle() }) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Seed tells the notifier the outcome on record when the agent starts (the state file's), so that a
// failure already notified by the previous process is not sent again.
func (n *Notifier) Seed(outcome, reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if k, ok := problemKind(outcome); ok {
		n.problem = &open{kind: k, key: key(k, reason), reason: reason, count: 1}
	}
}

// problemKind is the kind of an outcome that is a problem.
func problemKind(outcome string) (Kind, bool) {
	switch outcome {
	case "failed", "invalid":
		return Failure, true
	case "refused":
		return Refusal, true
	}
	return "", false
}

func key(k Kind, reason string) string {
	sum := sha256.Sum256([]byte(string(k) + "\x00" + reason))
	return hex.EncodeToString(sum[:8])
}

// Observe classifies a cycle, folds it into the events in force and queues what is new. It never blocks.
func (n *Notifier) Observe(c Cycle) {
	if c.Time.IsZero() {
		c.Time = n.o.Now()
	}
	var events []Event
	base := Event{Environment: n.o.Environment, Release: c.Release, Commit: c.Commit, Outcome: c.Outcome, Time: c.Time.UTC()}
	n.mu.Lock()
	if k, ok := problemKind(c.Outcome); ok {
		kk := key(k, c.Reason)
		if n.problem != nil && n.problem.key == kk {
			n.problem.count++
		} else {
			e := base
			e.Kind, e.Reason, e.Count, e.Stack = k, c.Reason, 1, strings.Join(c.Stacks, ", ")
			if p := n.problem; p != nil {
				e.Previous, e.PreviousCount = string(p.kind)+": "+p.reason, p.count
			}
			n.problem = &open{kind: k, key: kk, reason: c.Reason, count: 1}
			events = append(events, e)
		}
	} else if c.Outcome == "success" && n.problem != nil {
		e := base
		e.Kind, e.Count = Recovery, n.problem.count
		e.Previous, e.PreviousCount = string(n.problem.kind)+": "+n.problem.reason, n.problem.count
		n.problem = nil
		events = append(events, e)
	}
	if len(c.Drift) > 0 {
		reason := "put back: " + strings.Join(c.Drift, ", ")
		kk := key(Drift, reason)
		if n.drift != nil && n.drift.key == kk {
			n.drift.count++
		} else {
			e := base
			e.Kind, e.Reason, e.Count, e.Stack = Drift, reason, 1, strings.Join(stacksOf(c.Drift), ", ")
			n.drift = &open{kind: Drift, key: kk, reason: reason, count: 1}
			events = append(events, e)
		}
	} else if c.Outcome == "success" || c.Outcome == "failed" {
		n.drift = nil // a cycle that compared the stacks and put nothing back
	}
	n.mu.Unlock()
	for _, e := range events {
		e = n.redacted(e)
		for _, s := range n.senders {
			if len(s.t.On) == 0 || slices.Contains(s.t.On, e.Kind) {
				s.enqueue(e)
			}
		}
	}
}

// stacksOf returns the stacks of "stack/service" names, in order, once each.
func stacksOf(services []string) []string {
	var out []string
	for _, s := range services {
		st, _, _ := strings.Cut(s, "/")
		if !slices.Contains(out, st) {
			out = append(out, st)
		}
	}
	return out
}

func (n *Notifier) redacted(e Event) Event {
	r := n.o.Redact
	e.Environment, e.Stack, e.Release, e.Commit = r.String(e.Environment), r.String(e.Stack), r.String(e.Release), r.String(e.Commit)
	e.Outcome, e.Reason, e.Previous = r.String(e.Outcome), r.String(e.Reason), r.String(e.Previous)
	return e
}

// errPermanent marks an answer that retrying cannot change (a 4xx other than 408 and 429).
var errPermanent = errors.New("not retried")
