package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/compose"
	sawrelease "github.com/sabeiro/sawmill/internal/release"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// The tests of stacks/platform, the compose stack of the whole analytical cluster.

const platformRegistry = "registry.gitlab.com/sabeiro/sawmill"

var platformServices = []string{
	"airflow_scheduler", "airflow_webserver", "edge", "go_ingest", "kafka", "live_py", "metabase", "postgres",
}

// platformSecretEnv are the environment variables the stack's secrets are read from (dummy values here; each is
// unique so that a test can tell it was never printed).
var platformSecretEnv = []string{
	"TLS_CERT", "TLS_KEY", "POSTGRES_PASSWORD", "INGEST_DB_PASSWORD", "INGEST_TOKEN", "LIVE_DB_PASSWORD",
	"METABASE_DB_PASSWORD", "METABASE_ENCRYPTION_KEY", "AIRFLOW_DB_PASSWORD", "AIRFLOW_DB_CONN",
	"AIRFLOW_FERNET_KEY", "AIRFLOW_WEBSERVER_KEY", "AIRFLOW_ADMIN_PASSWORD",
}

func platformSecretValue(name string) string { return "dummy-test-value-" + strings.ToLower(name) }

// platformEnv sets what the compose files interpolate: the registry, the tag, the domain and every secret.
func platformEnv(t *testing.T) {
	t.Helper()
	t.Setenv("REGISTRY", platformRegistry)
	t.Setenv("TAG", "test")
	t.Setenv("DOMAIN", "sawmill.test")
	for _, name := range platformSecretEnv {
		t.Setenv(name, platformSecretValue(name))
	}
}

// platformRelease writes the stack's compose files as `pipegen release` does (docs/release.md): the repository
// images go_ingest and live_py pinned to a digest with release.Pin, everything else as in the repository.
// It returns the directory; the files keep their names.
func platformRelease(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "stacks", "platform")
	images := map[string]sawrelease.Image{}
	for _, name := range []string{"go_ingest", "live_py"} {
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
			"--allowed-registry", platformRegistry, "--allowed-registry", "docker.io"}},
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
		if want := []string{"image_digest:go_ingest", "image_digest:live_py"}; !slices.Equal(denied, want) {
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

	st, err := compose.Load(context.Background(), compose.Options{
		Files: []string{filepath.Join(dir, "compose.yaml"), filepath.Join(dir, "compose.production.yaml")},
		Stack: "platform",
		Env:   os.Environ(),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"edge_nginx_conf": {"server_name ~^metabase\\.;", "set $upstream http://metabase:3000;", "return 301 https://$host$request_uri;"},
		"postgres_init":   {"psql -v ON_ERROR_STOP=1 --username \"$POSTGRES_USER\"", "PASSWORD :'ingest_pw'"},
		"secrets_env":     {"path=\"${!name}\"", "export \"${name%_FILE}=$value\"", "exec \"$@\""},
	}
	for _, c := range st.Configs {
		key := strings.TrimPrefix(c.Name[:strings.LastIndex(c.Name, "-")], "platform_")
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
		if !strings.Contains(r.stdout, "26 created, 0 configured, 0 unchanged, 0 deleted") {
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
