package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// sender delivers one target's events in order.
type sender struct {
	n    *Notifier
	t    Target
	wake chan struct{}

	mu      sync.Mutex
	queue   []Event
	busy    bool // an event is being delivered
	dropped int
}

// enqueue adds e to the queue without blocking; a full queue drops its oldest event.
func (s *sender) enqueue(e Event) {
	s.mu.Lock()
	if len(s.queue) >= s.n.o.QueueSize {
		s.queue = s.queue[1:]
		s.dropped++
		s.n.o.Log.Warn("notification queue full; dropped the oldest", "target", s.t.Name, "dropped", s.dropped)
	}
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next takes the oldest queued event.
func (s *sender) next() (Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return Event{}, false
	}
	e := s.queue[0]
	s.queue = s.queue[1:]
	s.busy = true
	return e, true
}

// idle reports whether nothing is queued or being delivered.
func (s *sender) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) == 0 && !s.busy
}

func (s *sender) run(ctx context.Context) {
	for {
		e, ok := s.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		s.deliver(ctx, e)
		s.mu.Lock()
		s.busy = false
		s.mu.Unlock()
	}
}

// deliver sends e, retrying with capped, jittered exponential backoff.
func (s *sender) deliver(ctx context.Context, e Event) {
	body, err := s.body(e)
	if err != nil {
		s.n.o.Log.Error("notification not sent", "target", s.t.Name, "kind", string(e.Kind), "err", s.n.o.Redact.String(err.Error()))
		return
	}
	wait := s.n.o.MinBackoff
	for attempt := 1; ; attempt++ {
		err := s.post(ctx, body)
		if err == nil {
			s.n.o.Log.Info("notification sent", "target", s.t.Name, "kind", string(e.Kind), "attempt", attempt)
			return
		}
		msg := s.n.o.Redact.String(err.Error())
		if errors.Is(err, errPermanent) || attempt >= s.n.o.Attempts || ctx.Err() != nil {
			s.n.o.Log.Error("notification not sent", "target", s.t.Name, "kind", string(e.Kind), "attempts", attempt, "err", msg)
			return
		}
		d := time.Duration(float64(wait) * (0.5 + 0.5*s.n.o.Rand()))
		s.n.o.Log.Warn("notification failed; retrying", "target", s.t.Name, "kind", string(e.Kind), "attempt", attempt, "in", d.Round(time.Millisecond), "err", msg)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, s.n.o.MaxBackoff)
	}
}

// post sends one request. Its error never holds the URL: a webhook URL is a credential.
func (s *sender) post(ctx context.Context, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, s.n.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, s.t.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: invalid URL", errPermanent)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "sawmill-agent")
	resp, err := s.n.o.Client.Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusRequestTimeout:
		return fmt.Errorf("the receiver answered %s", resp.Status)
	default:
		return fmt.Errorf("%w: the receiver answered %s", errPermanent, resp.Status)
	}
}

// body renders e as the target's payload, redacted.
func (s *sender) body(e Event) ([]byte, error) {
	var text strings.Builder
	if err := s.t.Template.Execute(&text, e); err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	b, err := Payload(s.t.Format, e, s.n.o.Redact.String(text.String()))
	if err != nil {
		return nil, err
	}
	return []byte(s.n.o.Redact.String(string(b))), nil
}

// Payload is the JSON body of an event for a format: webhook is the event's fields and "text"; slack and
// mattermost are {"text": ...} (mattermost with "username"); teams is a message with an Adaptive Card, as
// Teams' Workflows webhooks take it.
func Payload(format string, e Event, text string) ([]byte, error) {
	switch format {
	case "webhook":
		return json.Marshal(struct {
			Event
			Text string `json:"text"`
		}{e, text})
	case "slack":
		return json.Marshal(map[string]string{"text": text})
	case "mattermost":
		return json.Marshal(map[string]string{"text": text, "username": "sawmill-agent"})
	case "teams":
		card := map[string]any{
			"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
			"type":    "AdaptiveCard",
			"version": "1.4",
			"body":    []any{map[string]any{"type": "TextBlock", "text": text, "wrap": true}},
		}
		return json.Marshal(map[string]any{
			"type":        "message",
			"attachments": []any{map[string]any{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}},
		})
	}
	return nil, fmt.Errorf("format %q: use %s", format, strings.Join(Formats, ", "))
}
