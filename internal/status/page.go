package status

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"html/template"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sabeiro/sawmill/internal/reconcile"
)

// Viewer is what the status page needs of the loop (*reconcile.Loop): the view of the stacks, cycles,
// history and pin. A Loop that is also a Viewer gets the page at / and the view's fields in /status.
type Viewer interface {
	View(ctx context.Context) reconcile.View
}

//go:embed page
var pageFiles embed.FS

var pageFuncs = template.FuncMap{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"join": strings.Join,
}

// pageTemplate is parsed once, when the daemon sets up its handlers (pageHandlers), not in init: the agent's
// other commands skipped it (0.9 M instructions of the 72 M of `agent version`).
var pageTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("page.html").Funcs(pageFuncs).ParseFS(pageFiles, "page/page.html"))
})

// pageCSP lets the page load only its own script and style and read /status: no inline script, nothing
// from elsewhere.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// pageHandlers serves the status page (/), its script and style, through guard.
func pageHandlers(mux *http.ServeMux, v Viewer, guard func(http.Handler) http.Handler) {
	page := pageTemplate()
	mux.Handle("GET /{$}", guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		if err := page.Execute(&b, v.View(r.Context())); err != nil {
			http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		_, _ = w.Write(b.Bytes())
	})))
	for name, typ := range map[string]string{"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"} {
		body, _ := pageFiles.ReadFile("page/" + name)
		mux.Handle("GET /"+name, guard(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", typ)
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = w.Write(body)
		})))
	}
}

// statusJSON is /status: the last cycle's record, and with a Viewer the whole view (the record's fields stay
// at the top level, as before).
func statusJSON(d Loop) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if v, ok := d.(Viewer); ok {
			_ = json.NewEncoder(w).Encode(v.View(r.Context()))
			return
		}
		_ = json.NewEncoder(w).Encode(d.Last())
	})
}
