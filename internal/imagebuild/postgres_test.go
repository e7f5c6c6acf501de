package imagebuild_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/imagebuild"
	"github.com/sabeiro/sawmill/internal/testenv"
)

// needPostgres skips the test on a machine without Debian's PostgreSQL packages (CI installs them).
func needPostgres(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/lib/postgresql"); errors.Is(err, fs.ErrNotExist) {
		t.Skip("PostgreSQL is not installed on this machine: apt-get install postgresql")
	}
}

var postgresOnce struct {
	sync.Once
	img  v1.Image
	err  error
	took time.Duration
}

// postgresImage builds the image once per test process.
func postgresImage(t *testing.T) v1.Image {
	t.Helper()
	postgresOnce.Do(func() {
		start := time.Now()
		postgresOnce.img, postgresOnce.err = imagebuild.PostgresDebian()
		postgresOnce.took = time.Since(start)
	})
	if postgresOnce.err != nil {
		t.Fatal(postgresOnce.err)
	}
	return postgresOnce.img
}

func TestPostgresDebianImage(t *testing.T) {
	needPostgres(t)
	img := postgresImage(t)
	again, err := imagebuild.PostgresDebian()
	if err != nil {
		t.Fatal(err)
	}
	d1, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := again.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("two builds from the same installed files differ: %s, %s", d1, d2)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var compressed int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		compressed += n
	}

	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if cfg.OS != "linux" || cfg.Architecture == "" || !cfg.Created.IsZero() {
		t.Errorf("os %q architecture %q created %v", cfg.OS, cfg.Architecture, cfg.Created)
	}
	if c.User != "999:999" || c.StopSignal != "SIGINT" || strings.Join(c.Entrypoint, " ") != "docker-entrypoint.sh" || strings.Join(c.Cmd, " ") != "postgres" {
		t.Errorf("user %q stop signal %q entrypoint %q cmd %q", c.User, c.StopSignal, c.Entrypoint, c.Cmd)
	}
	if _, ok := c.ExposedPorts["5432/tcp"]; !ok {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}
	env := strings.Join(c.Env, "\n")
	for _, want := range []string{"PGDATA=/var/lib/postgresql/data", "TZ=UTC", "PATH=/usr/lib/postgresql/"} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %s:\n%s", want, env)
		}
	}

	// The files: read the flattened filesystem.
	type ent struct {
		mode     int64
		uid, gid int
		typ      byte
		link     string
		data     []byte
	}
	files := map[string]ent{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var uncompressed int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mtime %v", h.Name, h.ModTime)
		}
		e := ent{mode: h.Mode, uid: h.Uid, gid: h.Gid, typ: h.Typeflag, link: h.Linkname}
		if strings.HasPrefix(h.Name, "etc/") {
			e.data, _ = io.ReadAll(tr)
		}
		uncompressed += h.Size
		files[strings.TrimSuffix(h.Name, "/")] = e
	}
	var major string
	for _, kv := range c.Env {
		if v, ok := strings.CutPrefix(kv, "PG_MAJOR="); ok {
			major = v
		}
	}
	for _, p := range []string{
		"usr/lib/postgresql/" + major + "/bin/postgres", "usr/lib/postgresql/" + major + "/bin/initdb",
		"usr/lib/postgresql/" + major + "/bin/pg_ctl", "usr/lib/postgresql/" + major + "/bin/psql",
		"usr/lib/postgresql/" + major + "/bin/pg_isready", "usr/local/bin/docker-entrypoint.sh",
		"usr/share/zoneinfo/UTC", "usr/share/zoneinfo/Etc/UTC", "docker-entrypoint-initdb.d",
	} {
		if _, ok := files[p]; !ok {
			t.Errorf("the image lacks /%s", p)
		}
	}
	for p := range files {
		if strings.Contains(p, "llvmjit") || strings.HasPrefix(p, "usr/share/doc/") || strings.HasPrefix(p, "usr/share/man/") {
			t.Errorf("the image holds /%s", p)
		}
	}
	if e := files["tmp"]; e.typ != tar.TypeDir || e.mode != 0o1777 {
		t.Errorf("/tmp: type %c mode %o", e.typ, e.mode)
	}
	for _, p := range []string{"var/lib/postgresql", "var/lib/postgresql/data", "var/run/postgresql"} {
		if e := files[p]; e.typ != tar.TypeDir || e.uid != 999 || e.gid != 999 {
			t.Errorf("/%s: type %c owner %d:%d", p, e.typ, e.uid, e.gid)
		}
	}
	if !bytes.Contains(files["etc/passwd"].data, []byte("\npostgres:x:999:999:")) || !bytes.Contains(files["etc/group"].data, []byte("\npostgres:x:999:")) {
		t.Errorf("/etc/passwd, /etc/group:\n%s%s", files["etc/passwd"].data, files["etc/group"].data)
	}
	t.Logf("PostgreSQL %s image %s: %.1f MB compressed, %.1f MB of files; built in %s",
		major, d1, float64(compressed)/1e6, float64(uncompressed)/1e6, postgresOnce.took.Round(time.Millisecond))
}

// TestPostgresDebianOnSwarm runs the image as a Swarm service the way a compose file for the upstream postgres
// image would: the password as a secret, init scripts (SQL, and an executable bash script) as configs, a
// host-mode published port and a pg_isready healthcheck. A client then sees what a user would.
func TestPostgresDebianOnSwarm(t *testing.T) {
	needPostgres(t)
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	img := postgresImage(t)
	ref := reg + "/sawmill-test/postgres:debian"
	digest, err := imagebuild.Push(img, ref)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	name := "pgtest" + randomHex(t, 3)
	password := randomHex(t, 16)
	labels := map[string]string{"sawmill.test": "imagebuild.TestPostgresDebianOnSwarm"}

	sec, err := dc.SecretCreate(ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{
		Annotations: swarm.Annotations{Name: name + "_postgres_password", Labels: labels},
		Data:        []byte(password + "\n"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		removeRetrying(t, "secret", func(ctx context.Context) error {
			_, err := dc.SecretRemove(ctx, sec.ID, client.SecretRemoveOptions{})
			return err
		})
	})
	// initScript makes a config and mounts it in /docker-entrypoint-initdb.d.
	initScript := func(file string, mode os.FileMode, content string) *swarm.ConfigReference {
		cname := name + "_" + strings.NewReplacer(".", "_", "-", "_").Replace(file)
		cfg, err := dc.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
			Annotations: swarm.Annotations{Name: cname, Labels: labels},
			Data:        []byte(content),
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			removeRetrying(t, "config", func(ctx context.Context) error {
				_, err := dc.ConfigRemove(ctx, cfg.ID, client.ConfigRemoveOptions{})
				return err
			})
		})
		return &swarm.ConfigReference{
			File:     &swarm.ConfigReferenceFileTarget{Name: "/docker-entrypoint-initdb.d/" + file, UID: "0", GID: "0", Mode: mode},
			ConfigID: cfg.ID, ConfigName: cname,
		}
	}
	configs := []*swarm.ConfigReference{
		initScript("10-init.sql", 0o444, "CREATE TABLE greetings (id int PRIMARY KEY, message text NOT NULL);\n"+
			"INSERT INTO greetings VALUES (1, 'hello from the init script');\n"),
		// Executable, bash, in the style of stacks/platform's: a role whose password comes from a secret.
		initScript("20-app.sh", 0o555, `#!/bin/bash
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v pw="$(tr -d '\r\n' < /run/secrets/postgres_password)" <<'SQL'
CREATE ROLE app LOGIN PASSWORD :'pw';
GRANT SELECT ON greetings TO app;
SQL
`),
	}

	port := testenv.FreePort(t)
	grace := 30 * time.Second
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: ref + "@" + digest,
				Env: []string{
					"POSTGRES_USER=postgres",
					"POSTGRES_DB=sawmill",
					"POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
					"PGDATA=/var/lib/postgresql/data/pgdata",
				},
				Secrets: []*swarm.SecretReference{{
					File:     &swarm.SecretReferenceFileTarget{Name: "postgres_password", UID: "0", GID: "0", Mode: 0o444},
					SecretID: sec.ID, SecretName: name + "_postgres_password",
				}},
				Configs: configs,
				Healthcheck: &container.HealthConfig{
					Test:     []string{"CMD", "pg_isready", "-U", "postgres", "-h", "127.0.0.1"},
					Interval: time.Second, Timeout: 5 * time.Second, Retries: 60,
				},
				StopGracePeriod: &grace,
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		EndpointSpec: &swarm.EndpointSpec{
			Mode: swarm.ResolutionModeDNSRR,
			Ports: []swarm.PortConfig{{
				Protocol: "tcp", TargetPort: 5432, PublishedPort: uint32(port), PublishMode: swarm.PortConfigPublishModeHost,
			}},
		},
	}
	svc, err := dc.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	var volume string // the anonymous volume of the image's VOLUME (Swarm removes it with the container)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := dc.ServiceRemove(ctx, svc.ID, client.ServiceRemoveOptions{}); err != nil {
			t.Errorf("remove service: %v", err)
		}
		if volume != "" {
			removeRetrying(t, "volume", func(ctx context.Context) error {
				_, err := dc.VolumeRemove(ctx, volume, client.VolumeRemoveOptions{})
				if err != nil && strings.Contains(strings.ToLower(err.Error()), "no such volume") {
					return nil // Swarm removed it with the task's container
				}
				return err
			})
		}
	})

	id := waitHealthy(ctx, t, dc, svc.ID)
	ci, err := dc.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ci.Container.Mounts {
		if m.Type == mount.TypeVolume && m.Destination == "/var/lib/postgresql/data" {
			volume = m.Name
		}
	}

	// The right password connects to POSTGRES_DB, where the init script made its table.
	dsn := func(user, pw string) string {
		u := url.URL{Scheme: "postgres", User: url.UserPassword(user, pw), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			Path: "/sawmill", RawQuery: "sslmode=disable&connect_timeout=10"}
		return u.String()
	}
	conn, err := pgx.Connect(ctx, dsn("postgres", password))
	if err != nil {
		t.Fatalf("connect with the secret's password: %v", err) // pgconn's errors name user and database, never the password
	}
	defer conn.Close(context.Background())
	var message, db, user, jit, tz, collate string
	if err := conn.QueryRow(ctx, "SELECT message FROM greetings WHERE id = 1").Scan(&message); err != nil {
		t.Fatalf("the init script's table: %v", err)
	}
	if message != "hello from the init script" {
		t.Errorf("message = %q", message)
	}
	if err := conn.QueryRow(ctx, "SELECT current_database(), current_user, current_setting('jit'), current_setting('TimeZone'), datcollate FROM pg_database WHERE datname = current_database()").
		Scan(&db, &user, &jit, &tz, &collate); err != nil {
		t.Fatal(err)
	}
	if db != "sawmill" || user != "postgres" || jit != "off" || tz != "UTC" || collate != "C" {
		t.Errorf("database %q user %q jit %q TimeZone %q collation %q; want sawmill postgres off UTC C", db, user, jit, tz, collate)
	}
	// SCRAM over TCP: a wrong password is refused.
	wrong, err := pgx.Connect(ctx, dsn("postgres", password+"x"))
	if err == nil {
		wrong.Close(context.Background())
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("connect with a wrong password: %v; want SQLSTATE 28P01 (invalid_password)", err)
	}

	// The role that the bash init script made.
	app, err := pgx.Connect(ctx, dsn("app", password))
	if err != nil {
		t.Fatalf("connect as the init script's role: %v", err)
	}
	defer app.Close(context.Background())
	if err := app.QueryRow(ctx, "SELECT message FROM greetings WHERE id = 1").Scan(&message); err != nil {
		t.Errorf("app reads the table: %v", err)
	}

	// The log tells the init story and never the password.
	logs := containerLogs(ctx, t, dc, id)
	for _, want := range []string{"running /docker-entrypoint-initdb.d/10-init.sql", "running /docker-entrypoint-initdb.d/20-app.sh", "PostgreSQL init process complete", "database system is ready to accept connections"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, password) {
		t.Error("the log holds the password")
	}
}

// waitHealthy waits for the service's task to run with a healthy container and returns the container's id.
func waitHealthy(ctx context.Context, t *testing.T, dc *client.Client, service string) string {
	t.Helper()
	last := ""
	for {
		tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", service)})
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks.Items {
			st := task.Status
			last = string(st.State) + " " + st.Message + " " + st.Err
			switch st.State {
			case swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateComplete:
				msg := last
				if st.ContainerStatus != nil && st.ContainerStatus.ContainerID != "" {
					msg += "\n" + containerLogs(ctx, t, dc, st.ContainerStatus.ContainerID)
				}
				t.Fatalf("task %s: %s", task.ID, msg)
			case swarm.TaskStateRunning:
				if st.ContainerStatus == nil || st.ContainerStatus.ContainerID == "" {
					continue
				}
				ci, err := dc.ContainerInspect(ctx, st.ContainerStatus.ContainerID, client.ContainerInspectOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if h := ci.Container.State.Health; h != nil {
					last += " health " + string(h.Status)
					if h.Status == container.Healthy {
						return st.ContainerStatus.ContainerID
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the service did not become healthy: %s", last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func containerLogs(ctx context.Context, t *testing.T, dc *client.Client, id string) string {
	t.Helper()
	rc, err := dc.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		return out.String() + "\n(logs: " + err.Error() + ")"
	}
	return out.String()
}

// removeRetrying retries a removal that fails while the service's task still holds the object.
func removeRetrying(t *testing.T, what string, remove func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		err := remove(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("remove %s: %v", what, err)
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
