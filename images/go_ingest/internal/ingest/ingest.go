// Package ingest is go_ingest's HTTP surface: POST /v1/ingest/{table}, GET /healthz, GET /metrics.
//
// In: Options (the allow-list, a Store, the bearer token, limits, a logger and a Prometheus registry).
// Out: an http.Handler. Request bodies (a JSON array of objects, or NDJSON) are checked against the allow-list
// here, before anything reaches the Store: an unknown table is a 404, a key that is not an allowed column is a
// 400, and in both cases the Store is not called. Imports allowlist, client_golang and the standard library;
// the PostgreSQL side lives in pgstore, behind Store, and the Kafka side (optional) in kafkapub, behind
// Publisher: a batch is published only after the Store committed it.
package ingest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/allowlist"
)

// Group is a set of records that set the same columns: Records is a JSON array of objects whose keys are
// exactly Columns (all allow-listed).
type Group struct {
	Columns []string
	Records json.RawMessage
}

// Store is where records go.
type Store interface {
	Insert(ctx context.Context, t *allowlist.Table, groups []Group) (int64, error)
	Ping(ctx context.Context) error
}

// Publisher receives every committed batch (kafkapub.Publisher): one JSON object per record, the batch id as
// the key. It returns how many records were acknowledged.
type Publisher interface {
	Publish(ctx context.Context, table, batch string, records [][]byte) (int, error)
}

// RejectedError is the database refusing the records themselves (a bad value, a constraint): a client error.
type RejectedError struct {
	Code    string // SQLSTATE
	Message string
}

func (e *RejectedError) Error() string { return e.Message + " (SQLSTATE " + e.Code + ")" }

// ErrSchemaMismatch is an allow-listed table or column that the database does not have: a deployment
// mistake, answered with 500 (not the client's fault, and retrying will not help).
var ErrSchemaMismatch = errors.New("the allow-list names a table or column the database does not have")

// Options configure the handler. New fills the defaults.
type Options struct {
	Tables       *allowlist.List
	Store        Store
	Token        []byte // the bearer token; must not be empty
	MaxBodyBytes int64  // default 1 MiB
	PingTimeout  time.Duration
	Logger       *slog.Logger
	// Registry receives the metrics; /metrics serves it. Default: a new registry.
	Registry *prometheus.Registry
	// Publisher, when set, receives every batch the Store committed (nil: no publishing).
	Publisher Publisher
	// PublishTimeout bounds the wait for the Publisher (default 5s); the rows are committed either way.
	PublishTimeout time.Duration
}

type server struct {
	Options
	tokenSum [32]byte
	rows     *prometheus.CounterVec
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	kafka    *prometheus.CounterVec
}

// New returns the service's handler.
func New(o Options) (http.Handler, error) {
	if o.Tables == nil || o.Store == nil {
		return nil, errors.New("ingest: Tables and Store are required")
	}
	if len(o.Token) == 0 {
		return nil, errors.New("ingest: empty token")
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 5 * time.Second
	}
	s := &server{Options: o, tokenSum: sha256.Sum256(o.Token)}
	s.rows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ingest_rows_total", Help: "Rows written, by allow-listed table.",
	}, []string{"table"})
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ingest_http_requests_total", Help: "HTTP requests, by handler and status code.",
	}, []string{"handler", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ingest_http_request_duration_seconds", Help: "HTTP request latency, by handler.",
		Buckets: prometheus.DefBuckets,
	}, []string{"handler", "code"})
	s.kafka = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ingest_kafka_records_total", Help: "Committed records sent to Kafka, by table and result (published, failed).",
	}, []string{"table", "result"})
	collectors := []prometheus.Collector{s.rows, s.requests, s.latency}
	if o.Publisher != nil {
		collectors = append(collectors, s.kafka)
	}
	for _, c := range collectors {
		if err := o.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("ingest: metrics: %w", err)
		}
	}
	for _, name := range o.Tables.Names() {
		s.rows.WithLabelValues(name) // so the series exist at 0
	}

	mux := http.NewServeMux()
	mux.Handle("POST /v1/ingest/{table}", s.instrument("ingest", http.HandlerFunc(s.ingest)))
	mux.Handle("GET /healthz", s.instrument("healthz", http.HandlerFunc(s.healthz)))
	mux.Handle("GET /metrics", s.instrument("metrics",
		promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{Registry: o.Registry})))
	return s.logRequests(mux), nil
}

func (s *server) instrument(name string, h http.Handler) http.Handler {
	labels := prometheus.Labels{"handler": name}
	return promhttp.InstrumentHandlerCounter(s.requests.MustCurryWith(labels),
		promhttp.InstrumentHandlerDuration(s.latency.MustCurryWith(labels), h))
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests logs one line per request: never headers (the Authorization header carries the token).
func (s *server) logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		level := slog.LevelInfo
		if r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
			level = slog.LevelDebug
		}
		s.Logger.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path,
			"status", sw.status, "duration_ms", time.Since(start).Milliseconds(), "remote", r.RemoteAddr)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// authorized compares the bearer token in constant time (over fixed-length digests, so the length does not
// leak either).
func (s *server) authorized(r *http.Request) (ok bool, reason string) {
	h := r.Header.Get("Authorization")
	scheme, tok, found := strings.Cut(h, " ")
	if h == "" || !found || !strings.EqualFold(scheme, "Bearer") {
		return false, "missing bearer token"
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
		return false, "invalid token"
	}
	return true, ""
}

func (s *server) ingest(w http.ResponseWriter, r *http.Request) {
	if ok, reason := s.authorized(r); !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="go_ingest"`)
		writeError(w, http.StatusUnauthorized, "%s", reason)
		return
	}
	name := r.PathValue("table")
	t, ok := s.Tables.Lookup(name)
	if !ok {
		writeError(w, http.StatusNotFound, "unknown table %q", clip(name))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.MaxBodyBytes)
	records, err := decode(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "request body larger than %d bytes", tooBig.Limit)
			return
		}
		writeError(w, http.StatusBadRequest, "malformed body: %v", err)
		return
	}
	groups, err := group(t, records)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	var n int64
	if len(groups) > 0 {
		n, err = s.Store.Insert(r.Context(), t, groups)
		if err != nil {
			var rej *RejectedError
			if errors.As(err, &rej) {
				writeError(w, http.StatusBadRequest, "rejected by the database: %s", rej.Message)
				return
			}
			s.Logger.Error("insert failed", "table", t.Name, "err", err)
			if errors.Is(err, ErrSchemaMismatch) {
				writeError(w, http.StatusInternalServerError, "server misconfigured: %v", ErrSchemaMismatch)
				return
			}
			writeError(w, http.StatusServiceUnavailable, "database error")
			return
		}
	}
	s.rows.WithLabelValues(t.Name).Add(float64(n))
	resp := map[string]any{"table": t.Name, "rows": n}
	if s.Publisher != nil && n > 0 {
		batch, published := s.publish(r.Context(), t.Name, records)
		resp["batch"] = batch
		resp["kafka"] = published
	}
	writeJSON(w, http.StatusOK, resp)
}

// publish sends a committed batch to the Publisher and says "published" or "failed". The rows are in
// PostgreSQL either way, so a failure is logged and counted, not the client's error (a retry would write the
// rows twice). The client going away does not cancel it: the batch is committed.
func (s *server) publish(ctx context.Context, table string, records []record) (batch, result string) {
	var id [16]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read does not fail
	batch = hex.EncodeToString(id[:])
	values := make([][]byte, len(records))
	for i, rec := range records {
		v, err := json.Marshal(rec) // keys sorted: the same record is the same bytes
		if err != nil {
			s.Logger.Error("kafka: encode record", "table", table, "batch", batch, "err", err)
			s.kafka.WithLabelValues(table, "failed").Add(float64(len(records)))
			return batch, "failed"
		}
		values[i] = v
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.PublishTimeout)
	defer cancel()
	acked, err := s.Publisher.Publish(ctx, table, batch, values)
	s.kafka.WithLabelValues(table, "published").Add(float64(acked))
	if err != nil {
		s.kafka.WithLabelValues(table, "failed").Add(float64(len(records) - acked))
		s.Logger.Error("kafka: publish failed; the rows are committed in PostgreSQL", "table", table, "batch", batch,
			"records", len(records), "acknowledged", acked, "err", err)
		return batch, "failed"
	}
	return batch, "published"
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

type record = map[string]json.RawMessage

// decode reads a JSON array of objects, or NDJSON (one object per line; a single object is NDJSON too).
func decode(body io.Reader) ([]record, error) {
	br := bufio.NewReader(body)
	first, err := peekNonSpace(br)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty body")
		}
		return nil, err
	}
	dec := json.NewDecoder(br)
	var records []record
	if first == '[' {
		if err := dec.Decode(&records); err != nil {
			return nil, err
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			if err == nil {
				return nil, errors.New("data after the JSON array")
			}
			return nil, err
		}
	} else {
		for {
			var rec record
			err := dec.Decode(&rec)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("record %d: %w", len(records)+1, err)
			}
			records = append(records, rec)
		}
	}
	for i, rec := range records {
		if rec == nil {
			return nil, fmt.Errorf("record %d: not an object", i+1)
		}
	}
	return records, nil
}

func peekNonSpace(br *bufio.Reader) (byte, error) {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, err
		}
		if !bytes.ContainsRune([]byte(" \t\r\n"), rune(b)) {
			return b, br.UnreadByte()
		}
	}
}

// group checks every key against the allow-list and groups records by the set of columns they set.
func group(t *allowlist.Table, records []record) ([]Group, error) {
	type acc struct {
		cols []string
		recs []record
	}
	var order []string
	byKey := map[string]*acc{}
	for i, rec := range records {
		if len(rec) == 0 {
			return nil, fmt.Errorf("record %d sets no columns", i+1)
		}
		cols := make([]string, 0, len(rec))
		for k := range rec {
			c, ok := t.Column(k)
			if !ok {
				return nil, fmt.Errorf("column %q is not allowed for table %q", clip(k), t.Name)
			}
			cols = append(cols, c)
		}
		sort.Strings(cols)
		key := strings.Join(cols, "\x00")
		a := byKey[key]
		if a == nil {
			a = &acc{cols: cols}
			byKey[key] = a
			order = append(order, key)
		}
		a.recs = append(a.recs, rec)
	}
	groups := make([]Group, 0, len(order))
	for _, key := range order {
		a := byKey[key]
		data, err := json.Marshal(a.recs)
		if err != nil {
			return nil, err
		}
		groups = append(groups, Group{Columns: a.cols, Records: data})
	}
	return groups, nil
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.PingTimeout)
	defer cancel()
	if err := s.Store.Ping(ctx); err != nil {
		s.Logger.Warn("health check: database unreachable", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": "database unreachable"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
