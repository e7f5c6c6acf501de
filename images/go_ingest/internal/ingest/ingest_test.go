package ingest_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sabeiro/sawmill/images/go_ingest/internal/allowlist"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/ingest"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/pgstore"
	"github.com/sabeiro/sawmill/images/go_ingest/internal/pgtest"
)

const token = "s3cret-test-token"

// counting wraps the real store and counts Insert calls, so a test can prove nothing was executed.
type counting struct {
	ingest.Store
	inserts atomic.Int32
}

func (c *counting) Insert(ctx context.Context, t *allowlist.Table, g []ingest.Group) (int64, error) {
	c.inserts.Add(1)
	return c.Store.Insert(ctx, t, g)
}

type fixture struct {
	pool  *pgxpool.Pool
	table string // the real table behind the "events" allow-list entry
	store *counting
	srv   *httptest.Server
}

const eventsColumns = `id bigserial PRIMARY KEY, source text NOT NULL, n integer, ts timestamptz NOT NULL DEFAULT now(),
	payload jsonb, tags text[]`

func newFixture(t *testing.T, maxBody int64) *fixture {
	t.Helper()
	return newFixtureWith(t, ingest.Options{MaxBodyBytes: maxBody})
}

// newFixtureWith is newFixture with more options (the table, store, token and logger are the fixture's).
func newFixtureWith(t *testing.T, o ingest.Options) *fixture {
	t.Helper()
	pool := pgtest.Pool(t)
	table := pgtest.Table(t, pool, "events", eventsColumns)
	list, err := allowlist.ParseCompact("events=" + table + ":source,n,ts,payload,tags")
	if err != nil {
		t.Fatal(err)
	}
	st, err := pgstore.New(context.Background(), pgtest.DSN(t), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	f := &fixture{pool: pool, table: table, store: &counting{Store: st}}
	o.Tables, o.Store, o.Token = list, f.store, []byte(token)
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h, err := ingest.New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) post(t *testing.T, path, auth, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s: response is not JSON: %q", path, data)
	}
	return resp.StatusCode, out
}

func (f *fixture) count(t *testing.T) int {
	t.Helper()
	var n int
	if err := f.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{f.table}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

const bearer = "Bearer " + token

func TestAuth(t *testing.T) {
	f := newFixture(t, 0)
	body := `[{"source":"auth"}]`
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"missing", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"token prefix", "Bearer " + token[:5], 401},
		{"wrong scheme", "Basic " + token, 401},
		{"right token", bearer, 200},
		{"scheme is case-insensitive", "bearer " + token, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := f.post(t, "/v1/ingest/events", tc.auth, body)
			if code != tc.want {
				t.Fatalf("status %d, want %d (%v)", code, tc.want, out)
			}
			if code == 401 && out["error"] == "" {
				t.Fatalf("no error message: %v", out)
			}
		})
	}
	if n := f.count(t); n != 2 {
		t.Fatalf("%d rows, want 2 (only the authorized requests)", n)
	}
	// unauthenticated requests learn nothing about the allow-list
	if code, _ := f.post(t, "/v1/ingest/nosuch", "", body); code != 401 {
		t.Fatalf("unknown table without a token: status %d, want 401", code)
	}
}

func TestAllowList(t *testing.T) {
	f := newFixture(t, 0)
	victim := pgtest.Table(t, f.pool, "x", "id int")
	for _, tc := range []struct {
		name, path, body string
		want             int
		msg              string
	}{
		{"unknown table", "/v1/ingest/nosuch", `[{"source":"a"}]`, 404, `unknown table "nosuch"`},
		{"real but not allow-listed table", "/v1/ingest/" + victim, `[{"id":1}]`, 404, "unknown table"},
		{"injection in the table", "/v1/ingest/events;DROP%20TABLE%20" + victim, `[{"source":"a"}]`, 404, "unknown table"},
		{"unknown column", "/v1/ingest/events", `[{"source":"a","nope":1}]`, 400, `column "nope" is not allowed for table "events"`},
		{"column not in the allow-list", "/v1/ingest/events", `[{"source":"a","id":99}]`, 400, `column "id" is not allowed`},
		{"injection in a column", "/v1/ingest/events", `[{"source":"a","a; DROP TABLE ` + victim + `":1}]`, 400, "is not allowed"},
		{"quoted injection in a column", "/v1/ingest/events", `{"source\") ; DROP TABLE ` + victim + ` --":1}`, 400, "is not allowed"},
		{"bad column in a later record", "/v1/ingest/events", "{\"source\":\"ok\"}\n{\"Source\":\"case matters\"}", 400, `column "Source"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := f.post(t, tc.path, bearer, tc.body)
			msg, _ := out["error"].(string)
			if code != tc.want || !strings.Contains(msg, tc.msg) {
				t.Fatalf("got %d %q, want %d containing %q", code, msg, tc.want, tc.msg)
			}
		})
	}
	if n := f.store.inserts.Load(); n != 0 {
		t.Fatalf("the store was called %d times; a rejected request must execute nothing", n)
	}
	if !pgtest.Exists(t, f.pool, victim) {
		t.Fatalf("table %s is gone", victim)
	}
	if n := f.count(t); n != 0 {
		t.Fatalf("%d rows written by rejected requests", n)
	}
}

func TestRowsWritten(t *testing.T) {
	f := newFixture(t, 0)
	code, out := f.post(t, "/v1/ingest/events", bearer, `[
		{"source":"array","n":1,"payload":{"k":[1,"two",null]},"tags":["a","b"]},
		{"source":"array","ts":"2026-01-02T03:04:05Z"},
		{"source":"it's \"quoted\"; DROP TABLE x; --","n":3}]`)
	if code != 200 || out["rows"] != float64(3) || out["table"] != "events" {
		t.Fatalf("array: %d %v", code, out)
	}
	code, out = f.post(t, "/v1/ingest/events", bearer, "{\"source\":\"ndjson\",\"n\":4}\n\n{\"source\":\"ndjson\",\"n\":5}\n")
	if code != 200 || out["rows"] != float64(2) {
		t.Fatalf("ndjson: %d %v", code, out)
	}
	code, out = f.post(t, "/v1/ingest/events", bearer, `[]`)
	if code != 200 || out["rows"] != float64(0) {
		t.Fatalf("empty array: %d %v", code, out)
	}

	rows, err := f.pool.Query(context.Background(), "SELECT source, n, ts, payload, tags FROM "+
		pgx.Identifier{f.table}.Sanitize()+" ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		source  string
		n       *int32
		ts      time.Time
		payload map[string]any
		tags    []string
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.source, &r.n, &r.ts, &r.payload, &r.tags); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("%d rows, want 5", len(got))
	}
	if got[0].source != "array" || got[0].n == nil || *got[0].n != 1 || len(got[0].tags) != 2 || got[0].tags[1] != "b" {
		t.Errorf("row 1: %+v", got[0])
	}
	if k, _ := got[0].payload["k"].([]any); len(k) != 3 || k[1] != "two" || k[2] != nil {
		t.Errorf("row 1 payload: %v", got[0].payload)
	}
	if want := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC); !got[1].ts.Equal(want) || got[1].n != nil {
		t.Errorf("row 2: ts %v n %v", got[1].ts, got[1].n)
	}
	if time.Since(got[0].ts) > time.Hour {
		t.Errorf("row 1: the column default (now()) was not applied: %v", got[0].ts)
	}
	if got[2].source != `it's "quoted"; DROP TABLE x; --` {
		t.Errorf("row 3: a value is data, stored as sent: %q", got[2].source)
	}
	if got[3].source != "ndjson" || *got[4].n != 5 {
		t.Errorf("ndjson rows: %+v %+v", got[3], got[4])
	}
}

func TestConcurrentBatches(t *testing.T) {
	f := newFixture(t, 0)
	const clients, perBatch = 16, 200
	var batch strings.Builder
	for i := 0; i < perBatch; i++ {
		batch.WriteString(`{"source":"concurrent","n":1}` + "\n")
	}
	var wg sync.WaitGroup
	codes := make(chan int, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/ingest/events", strings.NewReader(batch.String()))
			req.Header.Set("Authorization", bearer)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				codes <- -1
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Fatalf("status %d", c)
		}
	}
	if n := f.count(t); n != clients*perBatch {
		t.Fatalf("%d rows, want %d", n, clients*perBatch)
	}
}

func TestDatabaseRejectsValueAtomically(t *testing.T) {
	f := newFixture(t, 0)
	code, out := f.post(t, "/v1/ingest/events", bearer, `[{"source":"ok"},{"source":"bad","n":"not a number"}]`)
	if msg, _ := out["error"].(string); code != 400 || !strings.Contains(msg, "invalid input syntax for type integer") {
		t.Fatalf("%d %v", code, out)
	}
	code, out = f.post(t, "/v1/ingest/events", bearer, `[{"n":1}]`) // source is NOT NULL
	if msg, _ := out["error"].(string); code != 400 || !strings.Contains(msg, "null value") {
		t.Fatalf("%d %v", code, out)
	}
	if n := f.count(t); n != 0 {
		t.Fatalf("%d rows: a batch is one transaction", n)
	}
}

// TestSchemaQualifiedFromFile: the JSON allow-list form, a table in its own schema, and an allow-list that
// names a column the table lacks (a deployment mistake: 500, nothing written).
func TestSchemaQualifiedFromFile(t *testing.T) {
	pool := pgtest.Pool(t)
	schema := pgtest.Table(t, pool, "s", "id int") // a unique name, reused for the schema
	ctx := context.Background()
	sch := pgx.Identifier{schema}.Sanitize()
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+sch+"; CREATE TABLE "+sch+".metrics (name text, value double precision)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA "+sch+" CASCADE") })
	list, err := allowlist.Parse([]byte(`{"tables": {"m": {"schema": "` + schema + `", "table": "metrics", "columns": ["name", "value", "unit"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := pgstore.New(ctx, pgtest.DSN(t), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	h, err := ingest.New(ingest.Options{Tables: list, Store: st, Token: []byte(token)})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{srv: httptest.NewServer(h)}
	t.Cleanup(f.srv.Close)
	if code, out := f.post(t, "/v1/ingest/m", bearer, `[{"name":"cpu","value":0.5},{"name":"mem","value":1e3}]`); code != 200 || out["rows"] != float64(2) {
		t.Fatalf("%d %v", code, out)
	}
	var sum float64
	if err := pool.QueryRow(ctx, "SELECT sum(value) FROM "+sch+".metrics").Scan(&sum); err != nil || sum != 1000.5 {
		t.Fatalf("sum %v %v", sum, err)
	}
	code, out := f.post(t, "/v1/ingest/m", bearer, `[{"name":"disk","unit":"bytes"}]`)
	if msg, _ := out["error"].(string); code != 500 || !strings.Contains(msg, "misconfigured") {
		t.Fatalf("%d %v, want 500", code, out)
	}
}

func TestBodyLimit(t *testing.T) {
	f := newFixture(t, 256)
	big := `[{"source":"` + strings.Repeat("x", 1000) + `"}]`
	code, out := f.post(t, "/v1/ingest/events", bearer, big)
	if msg, _ := out["error"].(string); code != 413 || !strings.Contains(msg, "256 bytes") {
		t.Fatalf("%d %v, want 413", code, out)
	}
	if code, out := f.post(t, "/v1/ingest/events", bearer, `[{"source":"small"}]`); code != 200 {
		t.Fatalf("small body: %d %v", code, out)
	}
	if n := f.count(t); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

func TestMalformed(t *testing.T) {
	f := newFixture(t, 0)
	for name, body := range map[string]string{
		"empty":             "",
		"blank":             " \n ",
		"truncated":         `[{"source":`,
		"not objects":       `[1,2]`,
		"null record":       `[null]`,
		"null":              `null`,
		"string":            `"source"`,
		"empty object":      `[{}]`,
		"after the array":   `[{"source":"a"}] [{"source":"b"}]`,
		"garbage in ndjson": "{\"source\":\"a\"}\nnot json\n",
		"nested array":      `[[{"source":"a"}]]`,
	} {
		t.Run(name, func(t *testing.T) {
			code, out := f.post(t, "/v1/ingest/events", bearer, body)
			if code != 400 || out["error"] == nil {
				t.Fatalf("%d %v, want 400", code, out)
			}
		})
	}
	if n := f.count(t); n != 0 {
		t.Fatalf("%d rows written by malformed requests", n)
	}
}

func TestMethod(t *testing.T) {
	f := newFixture(t, 0)
	resp, err := http.Get(f.srv.URL + "/v1/ingest/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d, want 405", resp.StatusCode)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func TestHealthz(t *testing.T) {
	f := newFixture(t, 0)
	if code, body := get(t, f.srv.URL+"/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Fatalf("database up: %d %s", code, body)
	}

	// The same service with its database down: nothing listens on the port it points at.
	ln := httptest.NewServer(http.NotFoundHandler())
	dead := strings.TrimPrefix(ln.URL, "http://")
	ln.Close()
	st, err := pgstore.New(context.Background(), "postgres://nobody:pw@"+dead+"/x?sslmode=disable&connect_timeout=2", "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	list, _ := allowlist.ParseCompact("events=source")
	h, err := ingest.New(ingest.Options{Tables: list, Store: st, Token: []byte(token), PingTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	code, body := get(t, srv.URL+"/healthz")
	if code != 503 || !strings.Contains(body, "database unreachable") {
		t.Fatalf("database down: %d %s, want 503", code, body)
	}
	if strings.Contains(body, "pw") || strings.Contains(body, "nobody") {
		t.Fatalf("the health answer leaks connection details: %s", body)
	}
	// and an ingest while it is down is a 503, not a client error
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/ingest/events", strings.NewReader(`[{"source":"a"}]`))
	req.Header.Set("Authorization", bearer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("ingest with the database down: %d, want 503", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	f := newFixture(t, 0)
	f.post(t, "/v1/ingest/events", bearer, `[{"source":"m"},{"source":"m"},{"source":"m"}]`)
	f.post(t, "/v1/ingest/events", "Bearer wrong", `[{"source":"m"}]`)
	f.post(t, "/v1/ingest/nosuch", bearer, `[{"source":"m"}]`)
	code, body := get(t, f.srv.URL+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`ingest_rows_total{table="events"} 3`,
		`ingest_http_requests_total{code="200",handler="ingest"} 1`,
		`ingest_http_requests_total{code="401",handler="ingest"} 1`,
		`ingest_http_requests_total{code="404",handler="ingest"} 1`,
		`ingest_http_request_duration_seconds_count{code="200",handler="ingest"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(body, token) {
		t.Fatal("the token appears in /metrics")
	}
}
