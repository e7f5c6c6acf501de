package imagebuild_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// liveAppDir is images/live_py, the app the image carries.
const liveAppDir = "../../../images/live_py"

func needLivePy(t *testing.T) {
	t.Helper()
	needInstalled(t, "/usr/lib/python3/dist-packages/psycopg2", "apt-get install python3 python3-psycopg2")
}

var livePyBuild onceImage

// livePyImage builds the image once per test process.
func livePyImage(t *testing.T) v1.Image {
	t.Helper()
	return livePyBuild.get(t, func() (v1.Image, error) { return imagebuild.LivePyDebian(liveAppDir) })
}

func TestLivePyDebianImage(t *testing.T) {
	needLivePy(t)
	img := livePyImage(t)
	again, err := imagebuild.LivePyDebian(liveAppDir)
	if err != nil {
		t.Fatal(err)
	}
	d1, compressed := sameBuild(t, img, again)

	// The Dockerfile's configuration.
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if cfg.OS != "linux" || cfg.Architecture == "" || !cfg.Created.IsZero() {
		t.Errorf("os %q architecture %q created %v", cfg.OS, cfg.Architecture, cfg.Created)
	}
	if strings.Join(c.Entrypoint, " ") != "python3 /app/live.py" || len(c.Cmd) != 0 || c.WorkingDir != "/app" ||
		c.User != "65534:65534" || c.StopSignal != "SIGTERM" {
		t.Errorf("entrypoint %q cmd %q workdir %q user %q stop signal %q", c.Entrypoint, c.Cmd, c.WorkingDir, c.User, c.StopSignal)
	}
	if _, ok := c.ExposedPorts["8080/tcp"]; !ok || len(c.ExposedPorts) != 1 {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	env := "\n" + strings.Join(c.Env, "\n") + "\n"
	for _, want := range []string{"PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "LIVE_LISTEN=:8080", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"} {
		if !strings.Contains(env, "\n"+want+"\n") {
			t.Errorf("env lacks %s:%s", want, env)
		}
	}
	if h := c.Healthcheck; h == nil || strings.Join(h.Test, " ") != "CMD python /app/live.py --healthcheck" || h.Interval != 10*time.Second {
		t.Errorf("healthcheck %+v", h)
	}
	if c.Labels["org.opencontainers.image.title"] != "live_py" {
		t.Errorf("labels %v", c.Labels)
	}

	// The files.
	files, uncompressed := imageFiles(t, img, "app/")
	if e := files["usr/bin/python"]; e.typ != tar.TypeSymlink || e.link != "python3" {
		t.Errorf("/usr/bin/python: type %c link %q", e.typ, e.link)
	}
	if e := files["usr/bin/python3"]; e.typ != tar.TypeSymlink || !strings.HasPrefix(e.link, "python3.") {
		t.Errorf("/usr/bin/python3: type %c link %q", e.typ, e.link)
	}
	for _, p := range []string{
		"usr/lib/python3/dist-packages/psycopg2/__init__.py", "usr/lib/python3/dist-packages/psycopg2/sql.py",
		"usr/lib/locale/C.utf8/LC_CTYPE", "etc/passwd", "tmp",
	} {
		if _, ok := files[p]; !ok {
			t.Errorf("the image lacks /%s", p)
		}
	}
	var psycopgExt, libpq bool
	for p, e := range files {
		psycopgExt = psycopgExt || (strings.HasPrefix(p, "usr/lib/python3/dist-packages/psycopg2/_psycopg.") && e.typ == tar.TypeReg)
		libpq = libpq || strings.HasSuffix(p, "/libpq.so.5")
		for _, bad := range []string{"/test/", "/idlelib/", "/tkinter/", "/ensurepip/", "/lib2to3/", "/__pycache__/", "/sqlite3/", "usr/share/doc/", "usr/share/man/", "/lib-dynload/_test", "/lib-dynload/readline."} {
			if strings.Contains("/"+p+"/", bad) {
				t.Errorf("the image holds /%s", p)
			}
		}
	}
	if !psycopgExt || !libpq {
		t.Errorf("the image lacks psycopg2's _psycopg extension module (%v) or libpq.so.5 (%v)", psycopgExt, libpq)
	}
	// The app, as in images/live_py, owned by root and readable.
	for _, p := range []string{"live.py", "static/index.html", "static/app.js", "static/app.css"} {
		want, err := os.ReadFile(filepath.Join(liveAppDir, p))
		if err != nil {
			t.Fatal(err)
		}
		if e := files["app/"+p]; !bytes.Equal(e.data, want) || e.mode != 0o644 || e.uid != 0 {
			t.Errorf("/app/%s: %d bytes, mode %o, uid %d; want images/live_py's %d bytes, 0644, root", p, len(e.data), e.mode, e.uid, len(want))
		}
	}
	if e := files["tmp"]; e.typ != tar.TypeDir || e.mode != 0o1777 {
		t.Errorf("/tmp: type %c mode %o", e.typ, e.mode)
	}
	t.Logf("live_py image %s: %.1f MB compressed, %.1f MB of files, %d entries; built in %s",
		d1, float64(compressed)/1e6, float64(uncompressed)/1e6, len(files), livePyBuild.took.Round(time.Millisecond))

	// An app directory without live.py is an error that says so.
	if _, err := imagebuild.LivePyDebian(t.TempDir()); err == nil || !strings.Contains(err.Error(), "live.py") {
		t.Errorf("LivePyDebian(empty dir) = %v; want an error naming live.py", err)
	}
}

// TestLivePyDebianOnSwarm runs the image as a Swarm service next to the PostgresDebian image, as a stack
// would: both on an overlay network (dnsrr), the database password as a secret, the table from an init
// script, the compose healthcheck `python /app/live.py --healthcheck`, a host-mode published port. Then it
// checks what a user sees: the page, /healthz, /api/tables, and an activity event on /events after a row is
// inserted.
func TestLivePyDebianOnSwarm(t *testing.T) {
	needLivePy(t)
	needInstalled(t, "/usr/lib/postgresql", "apt-get install postgresql")
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	pgRef := reg + "/sawmill-test/postgres:debian"
	pgDigest, err := imagebuild.Push(postgresImage(t), pgRef)
	if err != nil {
		t.Fatal(err)
	}
	liveRef := reg + "/sawmill-test/live_py:debian"
	liveDigest, err := imagebuild.Push(livePyImage(t), liveRef)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	name := "livetest" + randomHex(t, 3)
	password := randomHex(t, 16)
	objs := newSwarmObjects(ctx, t, dc)
	nw := objs.network(name + "_net")
	sec := objs.secret(name+"_db_password", []byte(password+"\n"))
	initSQL := objs.config(name+"_init_sql",
		[]byte("CREATE TABLE events (id bigserial PRIMARY KEY, source text, payload jsonb, ts timestamptz DEFAULT now());\n"),
		"/docker-entrypoint-initdb.d/10-events.sql", 0o444)
	grace := 20 * time.Second
	networks := []swarm.NetworkAttachmentConfig{{Target: nw}}

	pgName := name + "_postgres"
	pgPort := testenv.FreePort(t)
	pgID := objs.service(swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: pgName},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:   pgRef + "@" + pgDigest,
				Env:     []string{"POSTGRES_USER=postgres", "POSTGRES_DB=sawmill", "POSTGRES_PASSWORD_FILE=/run/secrets/db_password"},
				Secrets: []*swarm.SecretReference{secretFile(sec, "db_password", "0", 0o444)},
				Configs: []*swarm.ConfigReference{initSQL},
				Healthcheck: &container.HealthConfig{
					Test:     []string{"CMD", "pg_isready", "-U", "postgres", "-h", "127.0.0.1"},
					Interval: time.Second, Timeout: 5 * time.Second, Retries: 60,
				},
				StopGracePeriod: &grace,
			},
			Networks:      networks,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		EndpointSpec: hostPort(5432, pgPort),
	})

	livePort := testenv.FreePort(t)
	liveID := objs.service(swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name + "_live"},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: liveRef + "@" + liveDigest,
				Env: []string{
					"LIVE_DATABASE_URL=postgresql://postgres@" + pgName + ":5432/sawmill?sslmode=disable",
					"LIVE_DATABASE_PASSWORD_FILE=/run/secrets/db_password",
					"LIVE_POLL_SECONDS=1",
				},
				Secrets: []*swarm.SecretReference{secretFile(sec, "db_password", "65534", 0o400)},
				// The compose file's healthcheck (the Dockerfile's), more often.
				Healthcheck: &container.HealthConfig{
					Test:     []string{"CMD", "python", "/app/live.py", "--healthcheck"},
					Interval: time.Second, Timeout: 5 * time.Second, Retries: 90,
				},
				StopGracePeriod: &grace,
			},
			Networks:      networks,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		EndpointSpec: hostPort(8080, livePort),
	})

	objs.keepVolume(waitHealthy(ctx, t, dc, pgID), "/var/lib/postgresql/data")
	liveContainer := waitHealthy(ctx, t, dc, liveID)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("live_py log:\n%s", containerLogs(context.Background(), t, dc, liveContainer))
		}
	})

	// The service runs as nobody.
	top, err := dc.ContainerTop(ctx, liveContainer, client.ContainerTopOptions{Arguments: []string{"-o", "pid,uid,gid,args"}})
	if err != nil {
		t.Fatal(err)
	}
	var procs []string
	for _, p := range top.Processes {
		procs = append(procs, strings.Join(p, " "))
		if len(p) < 4 || !strings.Contains(p[3], "/app/live.py") {
			continue
		}
		if p[1] != "65534" || p[2] != "65534" {
			t.Errorf("live.py runs as uid %s gid %s; want 65534", p[1], p[2])
		}
	}
	if !strings.Contains(strings.Join(procs, "\n"), "python3 /app/live.py") {
		t.Errorf("no python3 /app/live.py process in the container: %q", procs)
	}

	base := "http://127.0.0.1:" + strconv.Itoa(livePort)
	hc := &http.Client{Timeout: 10 * time.Second}
	get := func(p string) (*http.Response, string) {
		t.Helper()
		resp, err := hc.Get(base + p)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		return resp, string(b)
	}
	if resp, body := get("/healthz"); resp.StatusCode != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("GET /healthz: %d %s", resp.StatusCode, body)
	}
	resp, body := get("/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(body, "<title>Sawmill: live ingest</title>") || !strings.Contains(body, `<script src="/app.js">`) ||
		resp.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("GET /: %d %q CSP %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"), body)
	}
	appJS, err := os.ReadFile(filepath.Join(liveAppDir, "static", "app.js"))
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := get("/app.js"); resp.StatusCode != 200 || body != string(appJS) {
		t.Errorf("GET /app.js: %d, %d bytes; want images/live_py/static/app.js", resp.StatusCode, len(body))
	}

	// /api/tables: the events table, once a poll has succeeded.
	type snapshot struct {
		OK     bool `json:"ok"`
		Tables map[string]struct {
			Inserted int64 `json:"inserted"`
		} `json:"tables"`
	}
	tables := func() (snapshot, string) {
		t.Helper()
		_, body := get("/api/tables")
		var s snapshot
		if err := json.Unmarshal([]byte(body), &s); err != nil {
			t.Fatalf("GET /api/tables: %v: %s", err, body)
		}
		return s, body
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		s, body := tables()
		if _, ok := s.Tables["public.events"]; ok && s.OK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/api/tables does not show public.events: %s", body)
		}
		time.Sleep(300 * time.Millisecond)
	}

	// /events: the snapshot at once; after an insert, an activity event for the table.
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, base+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != 200 || stream.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /events: %d %q", stream.StatusCode, stream.Header.Get("Content-Type"))
	}
	type sse struct{ event, data string }
	events := make(chan sse, 16)
	go func() {
		defer close(events)
		var ev sse
		sc := bufio.NewScanner(stream.Body)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					events <- ev
				}
				ev = sse{}
			case strings.HasPrefix(line, "event: "):
				ev.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	next := func(timeout time.Duration) (sse, bool) {
		select {
		case ev, ok := <-events:
			return ev, ok
		case <-time.After(timeout):
			return sse{}, false
		}
	}
	if ev, ok := next(10 * time.Second); !ok || ev.event != "snapshot" || !strings.Contains(ev.data, `"public.events"`) {
		t.Fatalf("first event on /events: %+v (ok %v); want a snapshot with public.events", ev, ok)
	}

	// A row, inserted the way an ingest service would, through the database's published port.
	conn, err := pgx.Connect(ctx, pgDSN("postgres", password, pgPort))
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err) // pgconn's errors never carry the password
	}
	if _, err := conn.Exec(ctx, "INSERT INTO events (source, payload) VALUES ($1, $2)", "livepy-test", `{"hello":"live"}`); err != nil {
		t.Fatal(err)
	}
	inserted := time.Now()
	conn.Close(ctx) // the session's statistics are published when it ends

	for {
		ev, ok := next(15 * time.Second)
		if !ok {
			t.Fatalf("no activity event for public.events within 15s of the insert")
		}
		if ev.event != "activity" {
			continue
		}
		var a struct {
			Changes []struct {
				Table    string `json:"table"`
				Inserted int64  `json:"inserted"`
				Delta    int64  `json:"delta"`
			} `json:"changes"`
		}
		if err := json.Unmarshal([]byte(ev.data), &a); err != nil {
			t.Fatalf("activity event: %v: %s", err, ev.data)
		}
		if len(a.Changes) == 1 && a.Changes[0].Table == "public.events" && a.Changes[0].Delta == 1 && a.Changes[0].Inserted == 1 {
			t.Logf("activity event %s after %s", ev.data, time.Since(inserted).Round(time.Millisecond))
			break
		}
		t.Fatalf("activity event %s; want public.events inserted 1 delta 1", ev.data)
	}
	if s, body := tables(); s.Tables["public.events"].Inserted != 1 {
		t.Errorf("/api/tables after the insert: %s", body)
	}

	// Neither log holds the password.
	for _, svc := range []string{pgID, liveID} {
		logs := serviceLogs(ctx, t, dc, svc)
		if strings.Contains(logs, password) {
			t.Errorf("the log of service %s holds the password", svc)
		}
	}
	if logs := containerLogs(ctx, t, dc, liveContainer); !strings.Contains(logs, "listening on 0.0.0.0:8080") {
		t.Errorf("live_py's log lacks the listening line:\n%s", logs)
	}
}
