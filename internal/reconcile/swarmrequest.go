package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/stack"
)

// Requests through the swarm: `agent rollback` run in any agent's task (a standby's included) leaves its
// request as a Swarm config <lease>.request-<id> beside the lease; the agent holding the lease finds it in
// the list the lease's renewal makes anyway (no API call of its own), removes it, acts at the start of a
// cycle, and answers with a config <lease>.answer-<id>, which the CLI reads and removes.
const (
	// RequestSchema and AnswerSchema name the encodings of a request's and an answer's config data.
	RequestSchema = "sawmill.request/v1"
	AnswerSchema  = "sawmill.answer/v1"
	// MaxRequestSize bounds a request config's data, MaxAnswerSize an answer's; larger ones are refused.
	MaxRequestSize = 4 << 10
	MaxAnswerSize  = 16 << 10
	// LabelRequestEnvironment is the label naming the environment of a request or an answer.
	LabelRequestEnvironment = "io.sawmill.request.environment"
	// answerTTL: an answer nobody read (the CLI gave up waiting) is removed by the acting agent after it.
	answerTTL = time.Hour
	// maxAnswerReason bounds the reason written in an answer (longer ones are cut).
	maxAnswerReason = 4 << 10
)

var requestIDRe = lazyRegexp(`^[0-9a-f]{16}$`)

// requestDoc is a request config's data.
type requestDoc struct {
	Schema      string    `json:"schema"`
	Environment string    `json:"environment"`
	Time        time.Time `json:"time"`
	Request     *Request  `json:"request"`
}

// answerDoc is an answer config's data.
type answerDoc struct {
	Schema      string  `json:"schema"`
	Environment string  `json:"environment"`
	Answer      *Answer `json:"answer"`
}

// CheckRequest checks a request: an ID of 16 hex digits, a known action, a target only for a rollback and
// then a release key or a commit (7 to 64 hex digits), a reason of at most 1024 bytes without control
// characters.
func CheckRequest(r *Request) error {
	switch {
	case r == nil:
		return errors.New("request: none")
	case !requestIDRe.MatchString(r.ID):
		return fmt.Errorf("request: ID %q is not 16 hex digits", r.ID)
	case r.Action != ActionRollback && r.Action != ActionUnpin:
		return fmt.Errorf("request: unknown action %q", r.Action)
	case r.Action == ActionUnpin && r.To != "":
		return errors.New("request: unpin names no release")
	case r.To != "" && !releaseKeyRe.MatchString(r.To) && !commitRe.MatchString(r.To):
		return fmt.Errorf("request: %q is neither a release key (deployment-12) nor a commit (7 to 64 lowercase hex digits)", r.To)
	case !cleanText(r.Reason, maxPinText):
		return fmt.Errorf("request: the reason is longer than %d bytes or has control characters", maxPinText)
	}
	return nil
}

// EncodeRequest returns the config data of request r of environment env, made at t.
func EncodeRequest(r *Request, env string, t time.Time) ([]byte, error) {
	b, err := json.Marshal(requestDoc{Schema: RequestSchema, Environment: env, Time: t.UTC(), Request: r})
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if _, err := DecodeRequest(b, env); err != nil {
		return nil, err
	}
	return b, nil
}

// DecodeRequest reads and checks a request config's data for environment env: at most MaxRequestSize bytes,
// one JSON object of RequestSchema and nothing after it, no unknown field, the environment env, a time, and
// a request that passes CheckRequest.
func DecodeRequest(b []byte, env string) (*Request, error) {
	var d requestDoc
	if err := readDoc(b, MaxRequestSize, "request", &d, func() (string, string) { return d.Schema, d.Environment }, RequestSchema, env); err != nil {
		return nil, err
	}
	if d.Time.IsZero() {
		return nil, errors.New("request: no time")
	}
	if err := CheckRequest(d.Request); err != nil {
		return nil, err
	}
	return d.Request, nil
}

// EncodeAnswer returns the config data of answer a of environment env; a long reason is cut.
func EncodeAnswer(a *Answer, env string) ([]byte, error) {
	c := *a
	c.Reason = oneLine(c.Reason, maxAnswerReason)
	b, err := json.Marshal(answerDoc{Schema: AnswerSchema, Environment: env, Answer: &c})
	if err != nil {
		return nil, fmt.Errorf("answer: %w", err)
	}
	if _, err := DecodeAnswer(b, env); err != nil {
		return nil, err
	}
	return b, nil
}

// DecodeAnswer reads and checks an answer config's data for environment env (the CLI reads it: whoever
// controls the swarm writes it).
func DecodeAnswer(b []byte, env string) (*Answer, error) {
	var d answerDoc
	if err := readDoc(b, MaxAnswerSize, "answer", &d, func() (string, string) { return d.Schema, d.Environment }, AnswerSchema, env); err != nil {
		return nil, err
	}
	a := d.Answer
	switch {
	case a == nil:
		return nil, errors.New("answer: none")
	case !requestIDRe.MatchString(a.ID):
		return nil, fmt.Errorf("answer: ID %q is not 16 hex digits", a.ID)
	case a.Action != ActionRollback && a.Action != ActionUnpin:
		return nil, fmt.Errorf("answer: unknown action %q", a.Action)
	case a.Release != "" && !releaseKeyRe.MatchString(a.Release):
		return nil, fmt.Errorf("answer: release %q is not a release key", a.Release)
	case !knownOutcome(a.Outcome) || a.Outcome == outcome.Standby:
		return nil, fmt.Errorf("answer: outcome %q", a.Outcome)
	case !cleanText(a.Reason, maxAnswerReason):
		return nil, fmt.Errorf("answer: the reason is longer than %d bytes or has control characters", maxAnswerReason)
	case a.Time.IsZero():
		return nil, errors.New("answer: no time")
	}
	return a, nil
}

// oneLine returns s as valid UTF-8 with control characters as spaces, cut to at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n-3], "") + "..."
	}
	return s
}

// readDoc decodes config data b of at most limit bytes into v (strictJSON), then checks its schema and
// environment (header, read after decoding); what names the document in errors.
func readDoc(b []byte, limit int, what string, v any, header func() (schema, env string), schema, env string) error {
	if len(b) > limit {
		return fmt.Errorf("%s: more than %d bytes", what, limit)
	}
	if err := strictJSON(b, v); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch gotSchema, gotEnv := header(); {
	case gotSchema != schema:
		return fmt.Errorf("%s: schema %q, want %q", what, gotSchema, schema)
	case gotEnv != env:
		return fmt.Errorf("%s: of environment %q, not %q", what, gotEnv, env)
	}
	return nil
}

// strictJSON decodes one JSON object into v: no unknown field, nothing after it.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object")
	}
	return nil
}

func (s *SwarmPins) requestName(id string) string { return s.Name + ".request-" + id }
func (s *SwarmPins) answerName(id string) string  { return s.Name + ".answer-" + id }

// named returns the configs of list named <Name><infix><id> with their IDs (the callers check the IDs).
func (s *SwarmPins) named(list []swarm.Config, infix string) (configs []swarm.Config, ids []string) {
	for _, c := range list {
		if id, ok := strings.CutPrefix(c.Spec.Name, s.Name+infix); ok {
			configs, ids = append(configs, c), append(ids, id)
		}
	}
	return configs, ids
}

// Pending reports whether the last list of the lease (Listed) holds a request: the daemon then starts a
// cycle at once. No API call.
func (s *SwarmPins) Pending() bool {
	if s.Listed == nil {
		return false
	}
	l, _ := s.Listed()
	c, _ := s.named(l, ".request-")
	return len(c) > 0
}

// RequestConfig is the name of request id's config.
func (s *SwarmPins) RequestConfig(id string) string { return s.requestName(id) }

// Submit leaves request r (its ID filled in when empty) as a request config; the acting agent takes it at
// its next cycle.
func (s *SwarmPins) Submit(ctx context.Context, r *Request, now time.Time) error {
	if r.ID == "" {
		r.ID = NewRequestID()
	}
	data, err := EncodeRequest(r, s.Environment, now)
	if err != nil {
		return err
	}
	labels := map[string]string{stack.LabelOwner: stack.OwnerValue, LabelRequestEnvironment: s.Environment}
	if _, err := s.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: s.requestName(r.ID), Labels: labels}, Data: data}}); err != nil {
		return fmt.Errorf("request: create %s: %w", s.requestName(r.ID), err)
	}
	return nil
}

// Take returns the oldest request of the swarm, removed from it (nil: none). The list is the lease's last
// (Listed), so a cycle with no request makes no call. A request that is not the agent's (no owner label) or
// does not pass DecodeRequest is removed and returned with its error (req non-nil when its name gives its ID,
// for an answer); one that cannot be removed is not acted on (another agent may act on it: fail closed).
// Answers older than an hour (nobody waited for them) are removed on the way.
func (s *SwarmPins) Take(ctx context.Context, now time.Time) (*Request, error) {
	l, err := s.list(ctx, false)
	if err != nil {
		return nil, err
	}
	answers, _ := s.named(l, ".answer-")
	for _, a := range answers {
		if now.Sub(a.CreatedAt) > answerTTL {
			_, _ = s.Client.ConfigRemove(ctx, a.ID, client.ConfigRemoveOptions{})
		}
	}
	configs, ids := s.named(l, ".request-")
	if len(configs) == 0 {
		return nil, nil
	}
	i := 0
	for j := range configs {
		if configs[j].CreatedAt.Before(configs[i].CreatedAt) || (configs[j].CreatedAt.Equal(configs[i].CreatedAt) && ids[j] < ids[i]) {
			i = j
		}
	}
	c, id := configs[i], ids[i]
	defer s.wrote()
	if _, err := s.Client.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
		return nil, fmt.Errorf("request: remove %s (not acted on): %w", c.Spec.Name, err)
	}
	var req *Request
	switch {
	case c.Spec.Labels[stack.LabelOwner] != stack.OwnerValue:
		err = fmt.Errorf("request: config %s is not the agent's (no %s=%s label)", c.Spec.Name, stack.LabelOwner, stack.OwnerValue)
	default:
		if req, err = DecodeRequest(c.Spec.Data, s.Environment); err == nil && req.ID != id {
			req, err = nil, fmt.Errorf("request: config %s holds request %s", c.Spec.Name, req.ID)
		}
	}
	if err != nil {
		err = fmt.Errorf("config %s: %w", c.Spec.Name, err)
		if requestIDRe.MatchString(id) {
			return &Request{ID: id, Action: ActionRollback, shared: true}, err
		}
		return nil, err
	}
	req.shared = true
	return req, nil
}

// Answer writes a's answer config, where the CLI that left the request reads it.
func (s *SwarmPins) Answer(ctx context.Context, a *Answer) error {
	data, err := EncodeAnswer(a, s.Environment)
	if err != nil {
		return err
	}
	labels := map[string]string{stack.LabelOwner: stack.OwnerValue, LabelRequestEnvironment: s.Environment}
	if _, err := s.Client.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
		Annotations: swarm.Annotations{Name: s.answerName(a.ID), Labels: labels}, Data: data}}); err != nil {
		return fmt.Errorf("answer: create %s: %w", s.answerName(a.ID), err)
	}
	s.wrote()
	return nil
}

// ReadAnswer returns the answer to request id and removes its config; nil when there is none yet (one list
// call). An answer that is not the agent's or does not pass DecodeAnswer is an error.
func (s *SwarmPins) ReadAnswer(ctx context.Context, id string) (*Answer, error) {
	l, err := s.Client.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", s.answerName(id))})
	if err != nil {
		return nil, fmt.Errorf("answer: list the swarm's configs: %w", err)
	}
	i := slices.IndexFunc(l.Items, func(c swarm.Config) bool { return c.Spec.Name == s.answerName(id) })
	if i < 0 {
		return nil, nil
	}
	c := l.Items[i]
	if c.Spec.Labels[stack.LabelOwner] != stack.OwnerValue {
		return nil, fmt.Errorf("answer: config %s is not the agent's", c.Spec.Name)
	}
	a, err := DecodeAnswer(c.Spec.Data, s.Environment)
	if err == nil && a.ID != id {
		err = fmt.Errorf("answer: config %s answers %s", c.Spec.Name, a.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", c.Spec.Name, err)
	}
	_, _ = s.Client.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{})
	return a, nil
}

// nextRequest returns the request this cycle handles: the state directory's (RequestFile) first, else the
// oldest of the swarm's (Pins, a SwarmPins).
func (l *Loop) nextRequest(ctx context.Context) (*Request, error) {
	req, err := takeRequest(l.RequestFile)
	if req != nil || err != nil {
		return req, err
	}
	sp, ok := l.Pins.(*SwarmPins)
	if !ok {
		return nil, nil
	}
	return sp.Take(ctx, l.Now())
}

// answerShared writes the answer to a request that came through the swarm; the CLI that left it waits for
// it. A failure is logged (the CLI then says it had no answer).
func (l *Loop) answerShared(a *Answer) {
	sp, ok := l.Pins.(*SwarmPins)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sp.Answer(ctx, a); err != nil {
		l.Log.Error("the answer to a request could not be written to the swarm", "id", a.ID, "err", err)
	}
}

// sharedRequestPending reports whether the lease's last list (made by the holder's renewal) holds a request:
// the loop then starts a cycle without waiting for its interval. No API call.
func (l *Loop) sharedRequestPending() bool {
	sp, ok := l.Pins.(*SwarmPins)
	return ok && l.held && sp.Pending()
}
