package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/compose"
	sawrelease "github.com/sabeiro/sawmill/internal/release"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// The tests of stacks/platform, the compose stack of the whole analytical cluster.

const platformRegistry = "registry.gitlab.com/sabeiro/sawmill"

var platformServices = []string{
	"airflow_scheduler", "airflow_webserver", "batch_etl", "edge", "go_ingest", "kafka", "kafka_ui", "live_py",
	"metabase", "postgres", "prometheus", "trino",
}

// platformRepoImages are the repository's images in the stack, which `pipegen release` pins.
var platformRepoImages = []string{"batch_etl", "go_ingest", "live_py"}

// platformSecretEnv are the environment variables the stack's secrets are read from (dummy values here; each is
// unique so that a test can tell it was never printed).
var platformSecretEnv = []string{
	"TLS_CERT", "TLS_KEY", "POSTGRES_PASSWORD", "INGEST_DB_PASSWORD", "INGEST_TOKEN", "LIVE_DB_PASSWORD",
	"METABASE_DB_PASSWORD", "METABASE_ENCRYPTION_KEY", "AIRFLOW_DB_PASSWORD", "AIRFLOW_DB_CONN",
	"AIRFLOW_FERNET_KEY", "AIRFLOW_WEBSERVER_KEY", "AIRFLOW_ADMIN_PASSWORD", "ETL_DB_PASSWORD", "TRINO_DB_PASSWORD",
	"BATCH_ETL_TOKEN", "EDGE_HTPASSWD",
}

func platformSecretValue(name string) string { return "dummy-test-value-" + strings.ToLower(name) }

// platformEnv sets what the compose files interpolate: the registry, the tag, the domain and every secret.
func platformEnv(t *testing.T) {
	t.Helper()
	t.Setenv("REGISTRY", platformRegistry)
	t.Setenv("TAG", "test")
	t.Setenv("DOMAIN", "sawmill.test")
	t.Setenv("SAWMILL_GRANT", "edge:edge") // the platform grants the edge service its role (--grant edge:edge)
	for _, name := range platformSecretEnv {
		t.Setenv(name, platformSecretValue(name))
	}
}

// platformRelease writes the stack's compose files as `pipegen release` does (docs/release.md): the repository
// images (platformRepoImages) pinned to a digest with release.Pin, everything else as in the repository.
// It returns the directory; the files keep their names.
func platformRelease(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "stacks", "platform")
	images := map[string]sawrelease.Image{}
	for _, name := range platformRepoImages {
		repo := platformRegistry + "/" + name
		digest := "sha256:" + sha(name)
		images[name] = sawrelease.Image{Repository: repo, Tag: "test", Digest: digest, Ref: repo + ":test@" + digest}
	}
	dir := t.TempDir()
	for _, f := range []string{"compose.yaml", "compose.staging.yaml", "compose.production.yaml"} {
		raw, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		pinned, err := sawrelease.Pin(raw, platformRegistry, images)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), pinned, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type platformDecision struct{ Kind, Rule, Service, Message string }

func platformCheck(t *testing.T, args ...string) (int, []platformDecision, string) {
	t.Helper()
	r := runOffline(t, append([]string{"check", "-o", "json"}, args...)...)
	var rep struct{ Decisions []platformDecision }
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check %v: exit %d, %v\n%s%s", args, r.code, err, r.stdout, r.stderr)
	}
	return r.code, rep.Decisions, r.stdout + r.stderr
}

// TestPlatformCheck: the released stack (base + staging, base + production) passes the default policies in
// enforce mode with only the allowed warnings; in production (--env production) an image whose signature was
// not verified is denied (image_signature cannot be exempted), and nothing else is.
func TestPlatformCheck(t *testing.T) {
	platformEnv(t)
	dir := platformRelease(t)
	base := filepath.Join(dir, "compose.yaml")

	for _, c := range []struct {
		name string
		args []string
	}{
		{"staging", []string{"-c", base, "-c", filepath.Join(dir, "compose.staging.yaml"), "--env", "staging"}},
		{"production files, outside production", []string{"-c", base, "-c", filepath.Join(dir, "compose.production.yaml")}},
		{"staging, registry allowed", []string{"-c", base, "-c", filepath.Join(dir, "compose.staging.yaml"), "--env", "staging",
			"--allowed-registry", platformRegistry, "--allowed-registry", "docker.io", "--allowed-registry", "ghcr.io/kafbat"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, decisions, out := platformCheck(t, append(c.args, "platform")...)
			if code != 0 {
				t.Fatalf("exit %d, want 0:\n%s", code, out)
			}
			for _, d := range decisions {
				if d.Kind != "warn" || (d.Rule != "signature_unknown" && d.Rule != "registry_unchecked") {
					t.Errorf("unexpected decision %+v", d)
				}
			}
			for _, name := range platformSecretEnv {
				if strings.Contains(out, platformSecretValue(name)) {
					t.Errorf("the value of %s was printed", name)
				}
			}
		})
	}

	t.Run("production", func(t *testing.T) {
		code, decisions, out := platformCheck(t, "-c", base, "-c", filepath.Join(dir, "compose.production.yaml"), "--env", "production", "platform")
		if code != 3 {
			t.Fatalf("exit %d, want 3 (signatures not verified):\n%s", code, out)
		}
		var denied []string
		for _, d := range decisions {
			if d.Kind == "warn" {
				continue
			}
			if d.Rule != "image_signature" {
				t.Errorf("unexpected deny %+v", d)
			}
			denied = append(denied, d.Service)
		}
		slices.Sort(denied)
		if !slices.Equal(denied, platformServices) {
			t.Fatalf("image_signature denies %v, want one per service %v", denied, platformServices)
		}
	})

	// The repository's files name the repository images by tag: only the release pins them.
	t.Run("unpinned source", func(t *testing.T) {
		src := filepath.Join("..", "..", "stacks", "platform")
		code, decisions, out := platformCheck(t, "-c", filepath.Join(src, "compose.yaml"), "-c", filepath.Join(src, "compose.staging.yaml"), "--env", "staging", "platform")
		if code != 3 {
			t.Fatalf("exit %d, want 3:\n%s", code, out)
		}
		var denied []string
		for _, d := range decisions {
			if d.Kind != "warn" {
				denied = append(denied, d.Rule+":"+d.Service)
			}
		}
		slices.Sort(denied)
		var want []string
		for _, name := range platformRepoImages {
			want = append(want, "image_digest:"+name)
		}
		if !slices.Equal(denied, want) {
			t.Fatalf("denies %v, want %v", denied, want)
		}
	})
}

// TestPlatformPipelineCheck is the generated pipeline's policy job: the repository's files, before the
// release, with no credentials in the job, per environment. It passes; in production every signature is
// left to the agent's deploy-time check (a warning per image), and nothing else is waived.
func TestPlatformPipelineCheck(t *testing.T) {
	platformEnv(t)
	for _, name := range platformSecretEnv {
		os.Unsetenv(name) // the policy job has no environment-scoped CI/CD variables (restored by t.Setenv)
	}
	src := filepath.Join("..", "..", "stacks", "platform")
	for _, env := range []string{"staging", "production"} {
		code, decisions, out := platformCheck(t, "-c", filepath.Join(src, "compose.yaml"), "-c", filepath.Join(src, "compose."+env+".yaml"),
			"--env", env, "--pre-release", platformRegistry, "platform")
		if code != 0 {
			t.Fatalf("%s: exit %d, want 0:\n%s", env, code, out)
		}
		atDeploy := 0
		for _, d := range decisions {
			switch {
			case d.Kind != "warn":
				t.Errorf("%s: unexpected deny %+v", env, d)
			case d.Rule == "signature_at_deploy":
				atDeploy++
			}
		}
		if env == "production" && atDeploy != len(platformServices) {
			t.Errorf("production: %d signature_at_deploy warnings, want one per service (%d)", atDeploy, len(platformServices))
		}
	}
}

// TestPlatformRender: exactly one service publishes ports, the edge proxy, with 80 and 443; the configs
// delivered inline reach Swarm with compose's "$$" turned into "$".
func TestPlatformRender(t *testing.T) {
	platformEnv(t)
	dir := platformRelease(t)
	for _, env := range []string{"staging", "production"} {
		t.Run(env, func(t *testing.T) {
			r := runOffline(t, "render", "-c", filepath.Join(dir, "compose.yaml"), "-c", filepath.Join(dir, "compose."+env+".yaml"), "--env", env, "platform")
			if r.code != 0 {
				t.Fatalf("render: exit %d\n%s", r.code, r.stderr)
			}
			var doc struct {
				Services []struct {
					Key    string
					Labels map[string]string
					Ports  []struct {
						Published, Target int
						Protocol          string
					}
				}
			}
			if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
				t.Fatal(err)
			}
			var keys, publishing []string
			for _, s := range doc.Services {
				keys = append(keys, s.Key)
				if len(s.Ports) == 0 {
					continue
				}
				publishing = append(publishing, s.Key)
				var published []int
				for _, p := range s.Ports {
					published = append(published, p.Published)
				}
				slices.Sort(published)
				if !slices.Equal(published, []int{80, 443}) {
					t.Errorf("%s publishes %v, want [80 443]", s.Key, published)
				}
			}
			slices.Sort(keys)
			if !slices.Equal(keys, platformServices) {
				t.Fatalf("services %v, want %v", keys, platformServices)
			}
			if !slices.Equal(publishing, []string{"edge"}) {
				t.Fatalf("services publishing ports: %v, want only edge", publishing)
			}
			for _, name := range platformSecretEnv {
				if strings.Contains(r.stdout, platformSecretValue(name)) {
					t.Errorf("the value of %s is in the rendered document", name)
				}
			}
		})
	}

	st := loadPlatform(t, dir, "production")
	dag, err := os.ReadFile(filepath.Join("..", "..", "images", "batch_etl", "dags", "sawmill_batch_etl.py"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"edge_nginx_conf": {"server_name ~^metabase\\.;", "set $upstream http://metabase:3000;", "return 301 https://$host$request_uri;",
			"nginx_connections_active $connections_active"},
		"postgres_init": {"psql -v ON_ERROR_STOP=1 --username \"$POSTGRES_USER\"", "PASSWORD :'ingest_pw'", "PASSWORD :'etl_pw'",
			"CREATE SCHEMA etl AUTHORIZATION etl;", "GRANT SELECT ON public.events TO trino;"},
		"secrets_env":               {"path=\"${!name}\"", "export \"${name%_FILE}=$value\"", "exec \"$@\""},
		"trino_config":              {"coordinator=true", "http-server.process-forwarded=true"},
		"trino_catalog_kafka":       {"connector.name=kafka", "kafka.nodes=kafka:9092", "kafka.table-description-dir=/etc/trino/kafka"},
		"trino_catalog_postgresql":  {"connector.name=postgresql", "connection-user=trino", "connection-password=${ENV:TRINO_DB_PASSWORD}"},
		"trino_kafka_ingest_events": {`"topicName": "ingest.events"`},
		"prometheus_config":         {"names: [tasks.go_ingest]", "names: [tasks.edge]", "172.18.0.1:9090"},
		"batch_etl_jobs":            {`"inbox_events"`},
		"airflow_dag_batch_etl":     {string(dag)},
	}
	for _, c := range st.Configs {
		key := strings.TrimPrefix(c.Name[:strings.LastIndex(c.Name, "-")], "platform_")
		if key == "airflow_dag_batch_etl" && string(c.Data) != string(dag) {
			t.Errorf("config airflow_dag_batch_etl is not images/batch_etl/dags/sawmill_batch_etl.py as it is")
		}
		for _, s := range want[key] {
			if !strings.Contains(string(c.Data), s) {
				t.Errorf("config %s does not contain %q", key, s)
			}
		}
		if strings.Contains(string(c.Data), "$$") {
			t.Errorf("config %s still contains $$", key)
		}
		delete(want, key)
	}
	if len(want) != 0 {
		t.Errorf("configs missing: %v", want)
	}
}

// TestPlatformPlan: `agent plan` of the released stack against the test swarm, with the policies enforced,
// lists every service (and network, secret, config) as created and makes no write call.
func TestPlatformPlan(t *testing.T) {
	dc := testenv.Docker(t)
	platformEnv(t)
	dir := platformRelease(t)
	name := randomName("plat")
	t.Cleanup(func() { removeStack(dc, name) })
	before := snapshot(t, dc, name)

	for _, c := range []struct {
		override string
		args     []string
	}{
		{"compose.staging.yaml", []string{"--env", "staging"}},
		// production's signature rule needs verified signatures (--trust); see stacks/platform/README.md.
		{"compose.production.yaml", nil},
	} {
		args := append([]string{"plan", "-c", filepath.Join(dir, "compose.yaml"), "-c", filepath.Join(dir, c.override), "--policy-mode=enforce"}, c.args...)
		r := runAgent(t, dc, append(args, name)...)
		if r.code != 0 || r.writes != 0 {
			t.Fatalf("%s: exit %d with %d writes, want 0 and 0\n%s", c.override, r.code, r.writes, r.stderr)
		}
		for _, svc := range platformServices {
			if !strings.Contains(r.stdout, "service  "+name+"_"+svc+" ") {
				t.Errorf("%s: the plan does not list service %s", c.override, svc)
			}
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[2] != "created" {
				t.Errorf("%s: %q is not created", c.override, line)
			}
		}
		// 12 services, 3 networks, 17 secrets, 10 configs.
		if !strings.Contains(r.stdout, "42 created, 0 configured, 0 unchanged, 0 deleted") {
			t.Errorf("%s: unexpected summary:\n%s", c.override, r.stdout)
		}
		for _, n := range platformSecretEnv {
			if strings.Contains(r.stdout+r.stderr, platformSecretValue(n)) {
				t.Errorf("the value of %s was printed", n)
			}
		}
	}
	if after := snapshot(t, dc, name); after != before {
		t.Fatal("plan changed the swarm")
	}
}

// TestPlatformRoutes: every UI of the platform has its host name on the edge, routed to its service; the UIs
// without a login of their own ask for the edge's basic authentication and do not get its credentials; and
// the stack's README names every host in its routes table.
func TestPlatformRoutes(t *testing.T) {
	platformEnv(t)
	dir := platformRelease(t)
	st := loadPlatform(t, dir, "staging")
	var nginx string
	for _, c := range st.Configs {
		if strings.HasPrefix(c.Name, "platform_edge_nginx_conf-") {
			nginx = string(c.Data)
		}
	}
	if nginx == "" {
		t.Fatal("no edge_nginx_conf config")
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "stacks", "platform", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		host, upstream string
		basicAuth      bool
	}{
		{"metabase", "http://metabase:3000", false},
		{"airflow", "http://airflow_webserver:8080", false},
		{"live", "http://live_py:8080", false},
		{"ingest", "http://go_ingest:8080", false},
		{"trino", "http://trino:8080", true},
		{"kafka", "http://kafka_ui:8080", true},
		{"prometheus", "http://prometheus:9090", true},
	} {
		// The server block of the host: from its server_name to the next "server {".
		i := strings.Index(nginx, "server_name ~^"+r.host+"\\.;")
		if i < 0 {
			t.Errorf("%s: no server for %s.<domain> on the edge", r.host, r.host)
			continue
		}
		block := nginx[i:]
		if j := strings.Index(block, "server {"); j >= 0 {
			block = block[:j]
		}
		if !strings.Contains(block, "set $upstream "+r.upstream+";") {
			t.Errorf("%s: not routed to %s:\n%s", r.host, r.upstream, block)
		}
		if got := strings.Contains(block, "auth_basic_user_file /run/secrets/htpasswd;"); got != r.basicAuth {
			t.Errorf("%s: basic authentication %v, want %v", r.host, got, r.basicAuth)
		}
		if !strings.Contains(string(readme), "| `"+r.host+".DOMAIN` |") {
			t.Errorf("stacks/platform/README.md: the routes table does not name %s.DOMAIN", r.host)
		}
	}
	if !strings.Contains(nginx, `~^(trino|kafka|prometheus)\. "";`) {
		t.Error("the edge passes its basic-authentication header on to the UIs behind it")
	}
	// Prometheus reaches what it scrapes: go_ingest and the edge share its internal network.
	nets := map[string][]string{}
	for _, s := range st.Services {
		for _, n := range s.Spec.TaskTemplate.Networks {
			nets[s.Spec.Name] = append(nets[s.Spec.Name], n.Target)
		}
	}
	for _, svc := range []string{"go_ingest", "edge", "trino", "kafka_ui", "batch_etl"} {
		if !slices.Contains(nets["platform_"+svc], "platform_backend") || !slices.Contains(nets["platform_prometheus"], "platform_backend") {
			t.Errorf("%s and prometheus do not share platform_backend: %v", svc, nets)
		}
	}
}

// TestPlatformWiring: the inline configs that other programs parse are well formed and agree with each other:
// Trino's Kafka table reads the topic go_ingest publishes the table events to, Prometheus's configuration is
// YAML with its scrape jobs, batch_etl's jobs file is JSON naming the job the DAG runs.
func TestPlatformWiring(t *testing.T) {
	platformEnv(t)
	dir := platformRelease(t)
	st := loadPlatform(t, dir, "production")
	cfg := map[string][]byte{}
	for _, c := range st.Configs {
		cfg[strings.TrimPrefix(c.Name[:strings.LastIndex(c.Name, "-")], "platform_")] = c.Data
	}
	env := map[string]string{}
	for _, s := range st.Services {
		if s.Spec.Name == "platform_go_ingest" {
			for _, kv := range s.Spec.TaskTemplate.ContainerSpec.Env {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		}
	}
	if env["INGEST_KAFKA_BROKERS"] != "kafka:9092" {
		t.Errorf("go_ingest does not publish to kafka:9092: INGEST_KAFKA_BROKERS=%q", env["INGEST_KAFKA_BROKERS"])
	}
	var table struct{ TableName, SchemaName, TopicName string }
	if err := json.Unmarshal(cfg["trino_kafka_ingest_events"], &table); err != nil {
		t.Fatalf("trino_kafka_ingest_events: %v", err)
	}
	if want := strings.ReplaceAll(env["INGEST_KAFKA_TOPIC"], "{table}", "events"); table.TopicName != want || want == "" {
		t.Errorf("Trino reads topic %q, go_ingest publishes events to %q", table.TopicName, want)
	}
	if !strings.Contains(string(cfg["trino_catalog_kafka"]), "kafka.table-names="+table.SchemaName+"."+table.TableName+"\n") {
		t.Errorf("the kafka catalog does not list %s.%s", table.SchemaName, table.TableName)
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(cfg["prometheus_config"], &prom); err != nil {
		t.Fatalf("prometheus_config: %v", err)
	}
	var jobs []string
	for _, j := range prom.ScrapeConfigs {
		jobs = append(jobs, j.JobName)
	}
	if want := []string{"prometheus", "go_ingest", "edge", "agent"}; !slices.Equal(jobs, want) {
		t.Errorf("Prometheus scrapes %v, want %v", jobs, want)
	}
	var etl struct{ Jobs map[string]json.RawMessage }
	if err := json.Unmarshal(cfg["batch_etl_jobs"], &etl); err != nil {
		t.Fatalf("batch_etl_jobs: %v", err)
	}
	if _, ok := etl.Jobs["inbox_events"]; !ok || !strings.Contains(string(cfg["airflow_dag_batch_etl"]), `"SAWMILL_BATCH_ETL_JOBS", "inbox_events"`) {
		t.Errorf("the DAG's default job inbox_events is not in batch_etl_jobs (%v)", etl.Jobs)
	}
}

// loadPlatform loads the released platform stack for env (its base file and env's override), interpolated with
// the test's environment (platformEnv).
func loadPlatform(t *testing.T, dir, env string) *stack.Stack {
	t.Helper()
	st, err := compose.Load(context.Background(), compose.Options{
		Files: []string{filepath.Join(dir, "compose.yaml"), filepath.Join(dir, "compose."+env+".yaml")},
		Stack: "platform",
		Env:   os.Environ(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}
