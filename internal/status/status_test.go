package status

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sabeiro/sawmill/internal/reconcile"
)

// loop is a Loop that counts triggers.
type loop struct{ triggers atomic.Int32 }

func (l *loop) Last() reconcile.Record { return reconcile.Record{} }
func (l *loop) Ready() bool            { return true }
func (l *loop) Trigger()               { l.triggers.Add(1) }

func post(h http.Handler, token, event, body string) int {
	req := httptest.NewRequest(http.MethodPost, "/hooks/gitlab", strings.NewReader(body))
	if token != "" {
		req.Header.Set("X-Gitlab-Token", token)
	}
	if event != "" {
		req.Header.Set("X-Gitlab-Event", event)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

const (
	deploymentBody = `{"object_kind":"deployment","status":"success","status_changed_at":"2026-11-30 02:00:00 +0000",` +
		`"deployment_id":15,"deployable_id":796,"environment":"staging","environment_tier":"staging","environment_slug":"staging",` +
		`"project":{"id":30,"path_with_namespace":"sawmill/platform"},"short_sha":"279484c0","commit_title":"Add new file"}`
	pipelineBody = `{"object_kind":"pipeline","object_attributes":{"id":31,"iid":3,"ref":"main","tag":false,` +
		`"sha":"bcbb5ec396a2c0f828686f14fac9b80b780504f2","status":"success","stages":["build","test","deploy"]},` +
		`"builds":[{"id":380,"stage":"deploy","name":"deploy:production","status":"manual","environment":{"name":"production","action":"start"}}]}`
)

func TestWebhook(t *testing.T) {
	for _, tc := range []struct {
		name, token, event, body string
		code                     int
		triggers                 bool
	}{
		{"deployment", "hook-secret", "Deployment Hook", deploymentBody, http.StatusAccepted, true},
		{"pipeline", "hook-secret", "Pipeline Hook", pipelineBody, http.StatusAccepted, true},
		{"the agent test's deployment", "hook-secret", "Deployment Hook", `{"object_kind":"deployment","status":"success"}`, http.StatusAccepted, true},
		{"wrong token", "wrong", "Deployment Hook", deploymentBody, http.StatusUnauthorized, false},
		{"no token", "", "Deployment Hook", deploymentBody, http.StatusUnauthorized, false},
		{"push", "hook-secret", "Push Hook", `{"object_kind":"push","ref":"refs/heads/main"}`, http.StatusNoContent, false},
		{"member hook without object_kind", "hook-secret", "Member Hook", `{"event_name":"user_add_to_group"}`, http.StatusNoContent, false},
		{"not JSON", "hook-secret", "Deployment Hook", `object_kind=deployment`, http.StatusBadRequest, false},
		{"empty", "hook-secret", "Deployment Hook", ``, http.StatusBadRequest, false},
		{"null", "hook-secret", "Deployment Hook", `null`, http.StatusBadRequest, false},
		{"array", "hook-secret", "Pipeline Hook", `[{"object_kind":"pipeline"}]`, http.StatusBadRequest, false},
		{"trailing data", "hook-secret", "Deployment Hook", `{"object_kind":"deployment"} {}`, http.StatusBadRequest, false},
		{"status not a string", "hook-secret", "Deployment Hook", `{"object_kind":"deployment","status":1}`, http.StatusBadRequest, false},
		{"header and body disagree", "hook-secret", "Deployment Hook", pipelineBody, http.StatusBadRequest, false},
		{"too large", "hook-secret", "Deployment Hook", `{"object_kind":"deployment","x":"` + strings.Repeat("a", MaxWebhookBody) + `"}`, http.StatusRequestEntityTooLarge, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &loop{}
			h := Handler(l, NewMetrics(), Options{Webhook: true, Status: true, WebhookToken: "hook-secret"})
			if code := post(h, tc.token, tc.event, tc.body); code != tc.code {
				t.Fatalf("status %d, want %d", code, tc.code)
			}
			if got := l.triggers.Load(); (got == 1) != tc.triggers || got > 1 {
				t.Fatalf("%d triggers, want triggered=%v", got, tc.triggers)
			}
		})
	}
}

// An agent without a webhook token refuses every webhook.
func TestWebhookDisabled(t *testing.T) {
	l := &loop{}
	if code := post(Handler(l, NewMetrics(), Options{Webhook: true, Status: true}), "", "Deployment Hook", deploymentBody); code != http.StatusUnauthorized || l.triggers.Load() != 0 {
		t.Fatalf("status %d, %d triggers", code, l.triggers.Load())
	}
}

func TestParseEvent(t *testing.T) {
	for body, want := range map[string]Event{
		deploymentBody: {Kind: KindDeployment, Status: "success", Environment: "staging"},
		pipelineBody:   {Kind: KindPipeline, Status: "success", Ref: "main"},
		`{"object_kind":"build","environment":{"name":"staging"}}`: {Kind: "build"},
		`{"event_name":"project_create"}`:                          {},
	} {
		got, err := ParseEvent([]byte(body))
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", body, got, err, want)
		}
	}
}

// /status and /metrics can require a bearer token, or be left off a listener (served on another address).
func TestStatusAccess(t *testing.T) {
	get := func(h http.Handler, path, auth string) int {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	guarded := Handler(&loop{}, NewMetrics(), Options{Status: true, StatusToken: "status-token"})
	for _, path := range []string{"/status", "/metrics"} {
		if code := get(guarded, path, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without the token: %d", path, code)
		}
		if code := get(guarded, path, "wrong"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d", path, code)
		}
		if code := get(guarded, path, "status-token"); code != http.StatusOK {
			t.Errorf("%s with the token: %d", path, code)
		}
	}
	if code := get(guarded, "/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz needs no token: %d", code)
	}
	webhookOnly := Handler(&loop{}, NewMetrics(), Options{Webhook: true, WebhookToken: "x"})
	if code := get(webhookOnly, "/status", ""); code != http.StatusNotFound {
		t.Errorf("/status on the webhook's listener when it has its own: %d", code)
	}
	srv := Server(webhookOnly)
	if srv.ReadTimeout == 0 || srv.WriteTimeout == 0 || srv.IdleTimeout == 0 || srv.ReadHeaderTimeout == 0 {
		t.Errorf("a server without every timeout: %+v", srv)
	}
}
