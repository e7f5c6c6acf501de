package status

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/reconcile"
)

// viewLoop is a Loop with a view.
type viewLoop struct {
	loop
	view reconcile.View
}

func (l *viewLoop) View(context.Context) reconcile.View { return l.view }

func testView() reconcile.View {
	at := time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC)
	return reconcile.View{
		Record:      reconcile.Record{Time: at, Release: "deployment-7", Commit: "a1b2c3d4e5", Outcome: outcome.Success},
		Environment: "staging",
		Running:     &reconcile.HistoryEntry{Release: "deployment-7", Commit: "a1b2c3d4e5", Pipeline: "javascript:alert(1)", Time: at, Outcome: outcome.Success},
		Pin:         &reconcile.Pin{Release: "deployment-7", Over: "deployment-8", Reason: "<script>alert(2)</script>", Since: at},
		Stacks: []reconcile.StackView{{Name: "shop", Outcome: outcome.Success, Services: []reconcile.ServiceView{{
			Name: "shop_web", Image: "reg/web:v1@sha256:abc", Digest: "sha256:abc", Signature: "verified", Signers: []string{"release"},
			Replicas: reconcile.Replicas{Running: 2, Desired: 3, Health: "degraded"},
		}}}},
		Cycles:  []reconcile.Record{{Time: at, Release: "deployment-7", Outcome: outcome.Success}},
		History: []reconcile.HistoryEntry{{Release: "deployment-7", Outcome: outcome.Success, Time: at, Kept: true}},
		Key:     "k1",
	}
}

func get(t *testing.T, h http.Handler, path, token string) (int, http.Header, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, rec.Header(), string(b)
}

func TestStatusPage(t *testing.T) {
	l := &viewLoop{view: testView()}
	h := Handler(l, NewMetrics(), Options{Status: true, StatusToken: "status-token"})
	for _, p := range []string{"/", "/page.js", "/page.css", "/status"} {
		if code, _, _ := get(t, h, p, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without the token: %d, want 401", p, code)
		}
	}
	code, hdr, body := get(t, h, "/", "status-token")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(hdr.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("page: %d %v", code, hdr)
	}
	for _, want := range []string{"shop_web", "sha256:abc", "verified</span>: release", ">2</span>/<span", "degraded", "Pinned to deployment-7", "deployment-8", `data-key="k1"`} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// Release contents are untrusted: escaped text, no script link.
	if strings.Contains(body, "<script>alert") || strings.Contains(body, `href="javascript:`) {
		t.Fatalf("the page runs the release's text:\n%s", body)
	}
	if code, hdr, js := get(t, h, "/page.js", "status-token"); code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/javascript") || !strings.Contains(js, `fetch("status"`) {
		t.Fatalf("page.js: %d %v", code, hdr)
	}
	// /status: the record's fields where they always were, and the view's.
	_, _, js := get(t, h, "/status", "status-token")
	var m map[string]any
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		t.Fatal(err)
	}
	if m["outcome"] != "success" || m["release"] != "deployment-7" || m["pin"].(map[string]any)["over"] != "deployment-8" || m["view_key"] != "k1" {
		t.Fatalf("/status: %s", js)
	}

	// A loop without a view: /status as before, no page.
	h = Handler(&loop{}, NewMetrics(), Options{Status: true})
	if code, _, _ := get(t, h, "/", ""); code != http.StatusNotFound {
		t.Fatalf("page without a view: %d", code)
	}
	if _, _, js := get(t, h, "/status", ""); strings.Contains(js, "stacks") || !strings.Contains(js, `"outcome"`) {
		t.Fatalf("/status without a view: %s", js)
	}
}
