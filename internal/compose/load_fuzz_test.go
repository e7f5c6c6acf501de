package compose

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

// fuzzEnv is the interpolation environment of FuzzLoad: what the demo and platform stacks need, and
// SECRET_VALUE, the fuzzed value.
var fuzzEnv = []string{
	"REGISTRY=registry.example.com/sawmill", "TAG=v1", "DOMAIN=sawmill.example.com",
	"DEMO_DB_PASSWORD=fuzz-db", "DEMO_INGEST_TOKEN=fuzz-token", "DB_PASSWORD=fuzz-db",
	"TLS_CERT=fuzz-cert", "TLS_KEY=fuzz-key", "POSTGRES_PASSWORD=fuzz-pg", "INGEST_DB_PASSWORD=fuzz-ingest",
	"INGEST_TOKEN=fuzz-token", "LIVE_DB_PASSWORD=fuzz-live", "METABASE_DB_PASSWORD=fuzz-mb",
	"METABASE_ENCRYPTION_KEY=fuzz-mbkey", "AIRFLOW_DB_PASSWORD=fuzz-af", "AIRFLOW_DB_CONN=postgresql+psycopg2://airflow:x@postgres:5432/airflow",
	"AIRFLOW_FERNET_KEY=fuzz-fernet", "AIRFLOW_WEBSERVER_KEY=fuzz-web", "AIRFLOW_ADMIN_PASSWORD=fuzz-admin",
	"BATCH_ETL_TOKEN=fuzz-etl", "EDGE_HTPASSWD=fuzz:htpasswd", "ETL_DB_PASSWORD=fuzz-etldb", "TRINO_DB_PASSWORD=fuzz-trino",
	"DOTENV_VALUE=fuzz-dotenv",
}

// fuzzNameKey stands for the swarm's name key (swarm.NameKey).
var fuzzNameKey = []byte("fuzz-name-key-0123456789abcdef")

// FuzzLoad loads a compose file (and a secret file, ./secret.txt or ./db_password.txt, whose bytes are
// also the variable SECRET_VALUE) as the agent loads a release's stack "shop" (internal/reconcile/loop.go:
// confined to the release directory, strict interpolation, the name key, the environment label). No panic
// and no hang; every error is invalid input (exit 2); a stack that loads has only `shop_` services, and
// every secret and config carries the keyed content hash of its value in its name and labels.
func FuzzLoad(f *testing.F) {
	for _, p := range []string{"../../examples/demo/compose.yaml", "../../stacks/platform/compose.yaml", "../../stacks/platform/compose.production.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, []byte("s3cr3t\n"))
	}
	f.Add([]byte(base), []byte("pw"))
	f.Add([]byte("services:\n  web:\n    image: nginx:1.27\n    secrets: [a, b]\n    configs: [c]\nsecrets:\n  a: {file: ./secret.txt}\n  b: {environment: SECRET_VALUE}\nconfigs:\n  c: {content: \"${SECRET_VALUE}\"}\n"), []byte("value\x00with\xffbytes"))
	f.Add([]byte("services:\n  web:\n    image: nginx\n    deploy: {replicas: \"${SECRET_VALUE}\"}\n"), []byte("x"))
	f.Fuzz(func(t *testing.T, compose, secret []byte) {
		dir := t.TempDir()
		file := filepath.Join(dir, "compose.yaml")
		if err := os.WriteFile(file, compose, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"secret.txt", "db_password.txt"} {
			if err := os.WriteFile(filepath.Join(dir, name), secret, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		st, err := Load(ctx, Options{
			Files: []string{file}, Stack: "shop", Env: append(fuzzEnv[:len(fuzzEnv):len(fuzzEnv)], "SECRET_VALUE="+string(secret)),
			WorkDir: dir, Root: dir, Strict: true, NameKey: fuzzNameKey, Environment: "staging",
		})
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("Load took %s", d)
		}
		if err != nil {
			if st != nil {
				t.Fatalf("a stack and an error: %v", err)
			}
			if k := fault.KindOf(err); k != fault.Invalid {
				t.Fatalf("error is %v, want invalid input: %v", k, err)
			}
			return
		}
		if st.Name != "shop" || len(st.Services) == 0 {
			t.Fatalf("stack %q with %d services", st.Name, len(st.Services))
		}
		for _, s := range st.Services {
			if !strings.HasPrefix(s.Name, "shop_") || s.Spec.Name != s.Name {
				t.Fatalf("service %q (spec name %q) outside the stack", s.Name, s.Spec.Name)
			}
			if s.Spec.Labels[stack.LabelNamespace] != "shop" {
				t.Fatalf("service %s: namespace label %q", s.Name, s.Spec.Labels[stack.LabelNamespace])
			}
		}
		for _, objs := range [][]stack.Object{st.Secrets, st.Configs} {
			for _, o := range objs {
				if o.External {
					continue
				}
				if want := stack.ContentHash(fuzzNameKey, "shop", o.Key, o.Data); o.Hash != want || !strings.HasSuffix(o.Name, "-"+want) ||
					o.Labels[stack.LabelContentHash] != want || o.Labels[stack.LabelKey] != o.Key {
					t.Fatalf("object %s (key %s): hash %s, labels %v, want hash %s", o.Name, o.Key, o.Hash, o.Labels, want)
				}
			}
		}
	})
}
