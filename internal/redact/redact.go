// Package redact removes secret values from every string the agent writes: logs, stdout, /status, the state
// file, GitLab statuses. A Redactor knows the values in play (CI/CD variables, tokens, passed-through
// environment values) and replaces each occurrence with "<redacted>"; URLs lose their user info
// (https://user:password@host becomes https://<redacted>@host) whether or not their credentials are known.
//
// Values shorter than MinLen are not replaced (they would garble ordinary text, as GitLab's masking refuses
// them too); the agent's documentation says so. It imports only the standard library.
package redact

import (
	"context"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Mask replaces a redacted value.
const Mask = "<redacted>"

// MinLen is the shortest value that is redacted.
const MinLen = 4

// userinfo matches the credentials part of a URL: scheme://user[:password]@.
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s"']+@`)

// Redactor replaces known values. The zero value redacts URL user info only. It is safe for concurrent use.
type Redactor struct {
	mu       sync.RWMutex
	values   map[string]bool
	replacer *strings.Replacer
}

// New returns a Redactor that knows values.
func New(values ...string) *Redactor {
	r := &Redactor{}
	r.Add(values...)
	return r
}

// Add makes the redactor know more values (each also as it appears JSON-escaped or quoted by %q).
func (r *Redactor) Add(values ...string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.values == nil {
		r.values = map[string]bool{}
	}
	added := false
	for _, v := range values {
		v = strings.TrimSpace(v)
		if len(v) < MinLen {
			continue
		}
		for _, form := range forms(v) {
			if !r.values[form] {
				r.values[form] = true
				added = true
			}
		}
	}
	if !added {
		return
	}
	// Longest first, so that a value containing another is replaced whole.
	keys := make([]string, 0, len(r.values))
	for k := range r.values {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return strings.Compare(a, b)
	})
	pairs := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		pairs = append(pairs, k, Mask)
	}
	r.replacer = strings.NewReplacer(pairs...)
}

// forms are the spellings of v that can appear in output: as is, JSON-escaped, Go-quoted, and each line of a
// multi-line value.
func forms(v string) []string {
	out := []string{v}
	if q := strings.Trim(jsonEscape(v), `"`); q != v {
		out = append(out, q)
	}
	for _, line := range strings.Split(v, "\n") {
		if line = strings.TrimSpace(line); len(line) >= MinLen && line != v {
			out = append(out, line)
		}
	}
	return out
}

func jsonEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// String returns s with every known value and every URL's user info replaced.
func (r *Redactor) String(s string) string {
	if strings.Contains(s, "://") { // the expression backtracks at every letter: most strings have no URL
		s = userinfo.ReplaceAllString(s, "${1}"+Mask+"@")
	}
	if r == nil {
		return s
	}
	r.mu.RLock()
	rep := r.replacer
	r.mu.RUnlock()
	if rep == nil {
		return s
	}
	return rep.Replace(s)
}

// Writer returns a writer that redacts what it writes to w. Writes are redacted one by one: write whole lines.
func (r *Redactor) Writer(w io.Writer) io.Writer { return writer{r: r, w: w} }

type writer struct {
	r *Redactor
	w io.Writer
}

func (w writer) Write(p []byte) (int, error) {
	if _, err := io.WriteString(w.w, w.r.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Handler wraps a slog handler: the message and every attribute's value (errors and nested groups included)
// are redacted before h sees them.
func (r *Redactor) Handler(h slog.Handler) slog.Handler { return handler{r: r, h: h} }

type handler struct {
	r *Redactor
	h slog.Handler
}

func (h handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h handler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.r.String(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.h.Handle(ctx, out)
}

func (h handler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.r.String(v.String()))
	case slog.KindGroup:
		attrs := v.Group()
		out := make([]any, len(attrs))
		for i, g := range attrs {
			out[i] = h.attr(g)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		return slog.String(a.Key, h.r.String(v.String()))
	}
	return slog.Attr{Key: a.Key, Value: v}
}

func (h handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = h.attr(a)
	}
	return handler{r: h.r, h: h.h.WithAttrs(out)}
}

func (h handler) WithGroup(name string) slog.Handler { return handler{r: h.r, h: h.h.WithGroup(name)} }
