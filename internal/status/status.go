// Package status is the agent's HTTP surface and metrics while it runs as a daemon: /healthz, /readyz,
// /status (the last cycle's record, and the loop's whole view: stacks, cycles, history, pin), the read-only
// status page at / (html/template and a little JavaScript that polls /status, embedded), Prometheus /metrics
// and the GitLab webhook that triggers a cycle (ParseEvent reads its body).
//
// In: the reconcile loop (through the small Loop interface declared here) and the webhook token. Out: an
// http.Handler, and Metrics that the loop records into. It imports internal/reconcile (for its Record),
// internal/plan and internal/outcome.
package status

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/reconcile"
)

// Metrics are the daemon's Prometheus metrics, on a registry of their own. They implement reconcile.Recorder.
type Metrics struct {
	Registry     *prometheus.Registry
	syncDuration prometheus.Histogram
	lastSuccess  prometheus.Gauge
	changes      *prometheus.CounterVec
	rejections   *prometheus.CounterVec
	drift        prometheus.Counter
	isLeader     prometheus.Gauge
	failed       prometheus.Gauge
}

// NewMetrics registers the metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry:     prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sawmill_sync_duration_seconds", Help: "Duration of one sync cycle.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		lastSuccess:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "sawmill_last_success_timestamp_seconds", Help: "When a cycle last ended with the release applied and converged."}),
		changes:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sawmill_changes_applied_total", Help: "Objects created, configured or deleted, by action."}, []string{"action"}),
		rejections:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sawmill_rejections_total", Help: "Stacks not rolled out, by reason."}, []string{"reason"}),
		drift:        prometheus.NewCounter(prometheus.CounterOpts{Name: "sawmill_drift_found_total", Help: "Services found changed outside the agent (and put back)."}),
		isLeader:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "sawmill_leader", Help: "1 when this agent holds the swarm's lease."}),
		failed:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "sawmill_release_failed", Help: "1 while the release failed to roll out and is not rolled out again until it, its variables or the policies change (or agent retry)."}),
	}
	m.Registry.MustRegister(m.syncDuration, m.lastSuccess, m.changes, m.rejections, m.drift, m.isLeader, m.failed,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Cycle records a cycle's duration, and the time of the last success.
func (m *Metrics) Cycle(rec reconcile.Record, d time.Duration) {
	m.syncDuration.Observe(d.Seconds())
	switch rec.Outcome {
	case outcome.Success:
		m.lastSuccess.SetToCurrentTime()
		m.failed.Set(0)
	case outcome.Failed:
		m.failed.Set(1)
	case outcome.Refused, outcome.Invalid:
		m.failed.Set(0)
	}
}

// Applied counts the plan's changes, and the services it found changed outside the agent.
func (m *Metrics) Applied(p *plan.Plan) {
	for _, c := range p.Changes {
		if c.Action != plan.Unchanged {
			m.changes.WithLabelValues(string(c.Action)).Inc()
		}
		if c.Drift {
			m.drift.Inc()
		}
	}
}

// Rejected counts a stack that was not rolled out, by the outcome's metric label.
func (m *Metrics) Rejected(o outcome.Outcome) {
	if label := o.Row().Metric; label != "" {
		m.rejections.WithLabelValues(label).Inc()
	}
}

// Leader sets the leader gauge.
func (m *Metrics) Leader(held bool) {
	if held {
		m.isLeader.Set(1)
	} else {
		m.isLeader.Set(0)
	}
}

// Loop is what the handler needs of the reconcile loop.
type Loop interface {
	Last() reconcile.Record
	Ready() bool
	Trigger()
}

// MaxWebhookBody is the largest webhook body the handler reads; a larger one is refused (413).
const MaxWebhookBody = 1 << 20

// Event is what the agent reads of a GitLab webhook body (GitLab's "Webhook events" page): the kind
// (object_kind), and for a deployment its status and environment, for a pipeline its status and ref.
type Event struct {
	Kind        string // "deployment", "pipeline", or another object_kind ("" when the body has none)
	Status      string // deployment: status; pipeline: object_attributes.status
	Environment string // deployment: environment
	Ref         string // pipeline: object_attributes.ref
}

// Event kinds that trigger a cycle, and the X-Gitlab-Event header GitLab sends with each.
const (
	KindDeployment = "deployment"
	KindPipeline   = "pipeline"
)

var hookKinds = map[string]string{"Deployment Hook": KindDeployment, "Pipeline Hook": KindPipeline}

// Triggers reports whether the event starts a cycle: deployment and pipeline events do. A cycle asks GitLab
// for the environment's newest successful deployment itself, so the event is only a hint to look now.
func (e Event) Triggers() bool { return e.Kind == KindDeployment || e.Kind == KindPipeline }

// ParseEvent reads a webhook body: one JSON object of at most MaxWebhookBody bytes. The fields read must
// have the documented types (strings); every other field is ignored.
func ParseEvent(body []byte) (Event, error) {
	if len(body) > MaxWebhookBody {
		return Event{}, fmt.Errorf("webhook body: %d bytes, more than %d", len(body), MaxWebhookBody)
	}
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return Event{}, errors.New("webhook body: not a JSON object")
	}
	var head struct {
		ObjectKind string `json:"object_kind"`
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return Event{}, fmt.Errorf("webhook body: %w", err)
	}
	ev := Event{Kind: head.ObjectKind}
	switch ev.Kind {
	case KindDeployment:
		var d struct {
			Status      string `json:"status"`
			Environment string `json:"environment"`
		}
		if err := json.Unmarshal(body, &d); err != nil {
			return Event{}, fmt.Errorf("webhook body: deployment: %w", err)
		}
		ev.Status, ev.Environment = d.Status, d.Environment
	case KindPipeline:
		var p struct {
			ObjectAttributes struct {
				Status string `json:"status"`
				Ref    string `json:"ref"`
			} `json:"object_attributes"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return Event{}, fmt.Errorf("webhook body: pipeline: %w", err)
		}
		ev.Status, ev.Ref = p.ObjectAttributes.Status, p.ObjectAttributes.Ref
	}
	return ev, nil
}

// Options say what a handler serves. Webhook and Status select the endpoints (/healthz and /readyz are
// always served); StatusToken, when set, must come as `Authorization: Bearer <token>` for /status,
// /metrics and the status page (/, /page.js, /page.css); WebhookToken must come as X-Gitlab-Token (an empty one disables the webhook).
type Options struct {
	Webhook, Status           bool
	WebhookToken, StatusToken string
}

// Handler serves /healthz, /readyz, and as o says /status, /metrics and the GitLab webhook at /hooks/gitlab.
// The webhook accepts a request only with X-Gitlab-Token equal to the token (compared in constant time);
// deployment and pipeline events trigger a cycle (202), other events are ignored (204). A body that is not a
// JSON object (ParseEvent), or whose object_kind contradicts the X-Gitlab-Event header, is 400; a body over
// MaxWebhookBody is 413.
func Handler(d Loop, m *Metrics, o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.Ready() {
			http.Error(w, "no cycle finished yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	if o.Status {
		guard := func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if o.StatusToken != "" && !equal(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), o.StatusToken) {
					w.Header().Set("WWW-Authenticate", "Bearer")
					http.Error(w, "a bearer token is needed", http.StatusUnauthorized)
					return
				}
				h.ServeHTTP(w, r)
			})
		}
		mux.Handle("GET /status", guard(statusJSON(d)))
		if v, ok := d.(Viewer); ok {
			pageHandlers(mux, v, guard)
		}
		mux.Handle("GET /metrics", guard(promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})))
	}
	if o.Webhook {
		mux.HandleFunc("POST /hooks/gitlab", func(w http.ResponseWriter, r *http.Request) {
			if o.WebhookToken == "" || !equal(r.Header.Get("X-Gitlab-Token"), o.WebhookToken) {
				http.Error(w, "invalid token", http.StatusUnauthorized)
				return
			}
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBody))
			if err != nil {
				if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
					http.Error(w, fmt.Sprintf("webhook body: more than %d bytes", MaxWebhookBody), http.StatusRequestEntityTooLarge)
					return
				}
				http.Error(w, "webhook body: cannot read it", http.StatusBadRequest)
				return
			}
			ev, err := ParseEvent(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			kind, known := hookKinds[r.Header.Get("X-Gitlab-Event")]
			switch {
			case known && ev.Kind != kind:
				http.Error(w, "webhook: the body's object_kind is not the X-Gitlab-Event's ("+kind+")", http.StatusBadRequest)
			case known && ev.Triggers():
				d.Trigger()
				w.WriteHeader(http.StatusAccepted)
			default:
				w.WriteHeader(http.StatusNoContent)
			}
		})
	}
	return mux
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// Server is an HTTP server with every timeout set: a slow or stalled client cannot hold a connection.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           http.MaxBytesHandler(h, MaxWebhookBody),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}
