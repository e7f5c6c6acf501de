package imagebuild_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func needPostgres(t *testing.T) {
	t.Helper()
	needInstalled(t, "/usr/lib/postgresql", "apt-get install postgresql")
}

var postgresBuild onceImage

// postgresImage builds the image once per test process.
func postgresImage(t *testing.T) v1.Image {
	t.Helper()
	return postgresBuild.get(t, imagebuild.PostgresDebian)
}

func TestPostgresDebianImage(t *testing.T) {
	needPostgres(t)
	img := postgresImage(t)
	again, err := imagebuild.PostgresDebian()
	if err != nil {
		t.Fatal(err)
	}
	d1, compressed := sameBuild(t, img, again)

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
	files, uncompressed := imageFiles(t, img, "etc/")
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
		major, d1, float64(compressed)/1e6, float64(uncompressed)/1e6, postgresBuild.took.Round(time.Millisecond))
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
	objs := newSwarmObjects(ctx, t, dc)
	sec := objs.secret(name+"_postgres_password", []byte(password+"\n"))
	// initScript makes a config and mounts it in /docker-entrypoint-initdb.d.
	initScript := func(file string, mode os.FileMode, content string) *swarm.ConfigReference {
		cname := name + "_" + strings.NewReplacer(".", "_", "-", "_").Replace(file)
		return objs.config(cname, []byte(content), "/docker-entrypoint-initdb.d/"+file, mode)
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
		Annotations: swarm.Annotations{Name: name},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image: ref + "@" + digest,
				Env: []string{
					"POSTGRES_USER=postgres",
					"POSTGRES_DB=sawmill",
					"POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
					"PGDATA=/var/lib/postgresql/data/pgdata",
				},
				Secrets: []*swarm.SecretReference{secretFile(sec, "postgres_password", "0", 0o444)},
				Configs: configs,
				Healthcheck: &container.HealthConfig{
					Test:     []string{"CMD", "pg_isready", "-U", "postgres", "-h", "127.0.0.1"},
					Interval: time.Second, Timeout: 5 * time.Second, Retries: 60,
				},
				StopGracePeriod: &grace,
			},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		EndpointSpec: hostPort(5432, port),
	}
	id := waitHealthy(ctx, t, dc, objs.service(spec))
	objs.keepVolume(id, "/var/lib/postgresql/data")

	// The right password connects to POSTGRES_DB, where the init script made its table.
	dsn := func(user, pw string) string { return pgDSN(user, pw, port) }
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
