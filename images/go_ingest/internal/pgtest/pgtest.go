// Package pgtest gives go_ingest's tests a real PostgreSQL: the DSN comes from SAWMILL_TEST_PG_DSN
// (hack/postgres.sh start prints one). Without it the test is skipped, unless CI=true, where it fails.
// Each test gets fresh, uniquely named tables that are dropped when it ends. Used only by tests.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DSN returns the test database's DSN or skips (fails under CI=true).
func DSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("SAWMILL_TEST_PG_DSN")
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("SAWMILL_TEST_PG_DSN is not set (CI=true): run `export SAWMILL_TEST_PG_DSN=$(hack/postgres.sh start)`")
		}
		t.Skip("SAWMILL_TEST_PG_DSN is not set; `export SAWMILL_TEST_PG_DSN=$(hack/postgres.sh start)` runs these tests")
	}
	return dsn
}

// Pool connects to the test database; closed when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("test PostgreSQL does not answer: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Table creates a table named prefix_<random> from a column list ("id bigserial primary key, ...") and drops
// it when the test ends. It returns the name.
func Table(t testing.TB, pool *pgxpool.Pool, prefix, columns string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := strings.ToLower(prefix) + "_" + hex.EncodeToString(b)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE "+pgx.Identifier{name}.Sanitize()+" ("+columns+")"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	})
	return name
}

// Exists reports whether a table exists.
func Exists(t testing.TB, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(context.Background(), "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{name}.Sanitize()).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}
