package redact

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestRedactor(t *testing.T) {
	r := New("hunter2-password", "glpat-abcdef", "abc", "line one\nline two of a key")
	for in, want := range map[string]string{
		`replicas: "hunter2-password" is not an int`:            `replicas: "<redacted>" is not an int`,
		`token glpat-abcdef and glpat-abcdef`:                   `token <redacted> and <redacted>`,
		`abc is too short to redact`:                            `abc is too short to redact`,
		`git fetch https://oauth2:s3cr3t@gitlab.example/x.git`:  `git fetch https://<redacted>@gitlab.example/x.git`,
		`{"reason":"line one\nline two of a key"}`:              `{"reason":"<redacted>"}`,
		`second line: line two of a key`:                        `second line: <redacted>`,
		`ssh://git@host/repo and http://host/path@v1 untouched`: `ssh://<redacted>@host/repo and http://host/path@v1 untouched`,
	} {
		if got := r.String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
	var nilR *Redactor
	if got := nilR.String("https://u:p@h/"); got != "https://<redacted>@h/" {
		t.Errorf("nil redactor: %q", got)
	}
}

func TestHandlerAndWriter(t *testing.T) {
	r := New()
	var buf bytes.Buffer
	log := slog.New(r.Handler(slog.NewJSONHandler(&buf, nil))).With("source", "https://user:pw@example/repo")
	r.Add("s3cr3t-value") // learned after the logger was made
	log.Error("cycle failed: s3cr3t-value", "err", errors.New("interpolating replicas: s3cr3t-value"), slog.Group("g", "v", "x s3cr3t-value"), "n", 3)
	out := buf.String()
	if strings.Contains(out, "s3cr3t-value") || strings.Contains(out, "pw@") || !strings.Contains(out, `"n":3`) {
		t.Fatalf("log line: %s", out)
	}
	buf.Reset()
	fmt.Fprintln(r.Writer(&buf), "value s3cr3t-value")
	if buf.String() != "value <redacted>\n" {
		t.Fatalf("writer: %q", buf.String())
	}
}
