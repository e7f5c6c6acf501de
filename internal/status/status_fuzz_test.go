package status

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzWebhook posts a body with an X-Gitlab-Event header to the webhook and checks ParseEvent against the
// handler: the handler answers 202 and triggers exactly one cycle when the body parses, its kind is the
// header's and triggers; 400 when the body does not parse or contradicts the header; 204 otherwise. An
// accepted body is valid JSON.
func FuzzWebhook(f *testing.F) {
	f.Add("Deployment Hook", []byte(deploymentBody))
	f.Add("Pipeline Hook", []byte(pipelineBody))
	f.Add("Deployment Hook", []byte(`{"object_kind":"deployment","status":"success"}`))
	f.Add("Push Hook", []byte(`{"object_kind":"push","ref":"refs/heads/main","commits":[]}`))
	f.Add("Job Hook", []byte(`{"object_kind":"build","environment":null}`))
	f.Add("Deployment Hook", []byte(`{"object_kind":"deployment","status":["success"]}`))
	f.Add("Pipeline Hook", []byte(`{"object_kind":"pipeline","object_attributes":null}`))
	f.Add("Pipeline Hook", []byte(`null`))
	metrics := NewMetrics()
	f.Fuzz(func(t *testing.T, event string, body []byte) {
		ev, err := ParseEvent(body)
		if err == nil {
			if !json.Valid(body) || bytes.TrimLeft(body, " \t\r\n")[0] != '{' {
				t.Fatalf("accepted a body that is not a JSON object: %q", body)
			}
			if len(body) > MaxWebhookBody {
				t.Fatalf("accepted %d bytes", len(body))
			}
			if ev.Kind != KindDeployment && ev.Kind != KindPipeline && ev != (Event{Kind: ev.Kind}) {
				t.Fatalf("%s event with deployment or pipeline fields: %+v", ev.Kind, ev)
			}
		}

		l := &loop{}
		req := httptest.NewRequest(http.MethodPost, "/hooks/gitlab", bytes.NewReader(body))
		req.Header.Set("X-Gitlab-Token", "hook-secret")
		req.Header.Set("X-Gitlab-Event", event)
		rec := httptest.NewRecorder()
		Handler(l, metrics, Options{Webhook: true, Status: true, WebhookToken: "hook-secret"}).ServeHTTP(rec, req)

		kind, known := hookKinds[event]
		want := http.StatusNoContent
		switch {
		case len(body) > MaxWebhookBody:
			want = http.StatusRequestEntityTooLarge
		case err != nil, known && ev.Kind != kind:
			want = http.StatusBadRequest
		case known && ev.Triggers():
			want = http.StatusAccepted
		}
		if rec.Code != want {
			t.Fatalf("status %d, want %d (event %q, parsed %+v, %v)", rec.Code, want, event, ev, err)
		}
		if n := l.triggers.Load(); (n == 1) != (want == http.StatusAccepted) || n > 1 {
			t.Fatalf("%d triggers for status %d", n, rec.Code)
		}
	})
}
