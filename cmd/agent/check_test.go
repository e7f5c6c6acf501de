package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/swarm"
)

// runOffline runs the agent with no Docker engine: any attempt to connect fails the test.
func runOffline(t *testing.T, args ...string) agentRun {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, deps{stdout: &out, stderr: &errb, connect: func() (swarm.Client, error) {
		t.Errorf("agent %s connected to Docker", strings.Join(args, " "))
		return nil, errors.New("no Docker in this test")
	}})
	return agentRun{code: code, stdout: out.String(), stderr: errb.String()}
}

const digestPin = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// cleanCompose passes every default deny (its only remarks: signatures not verified, registries not checked).
const cleanCompose = `name: shop
services:
  nginx:
    image: registry.example/shop/nginx:1` + digestPin + `
    ports: ["443:8443", "80:8080"]
    healthcheck: {test: ["CMD", "/probe"], interval: 5s, retries: 3}
    deploy:
      labels: {io.sawmill.role: edge}
      resources: {limits: {cpus: "0.5", memory: 64M}}
      restart_policy: {condition: any}
      update_config: {failure_action: rollback, monitor: 20s}
  api:
    image: registry.example/shop/api:1` + digestPin + `
    environment:
      DB_PASSWORD_FILE: /run/secrets/db_password
    secrets: [db_password]
    healthcheck: {test: ["CMD", "/probe"], interval: 2s, retries: 3}
    deploy:
      resources: {limits: {cpus: "1", memory: 256M}}
      restart_policy: {condition: on-failure}
      update_config: {failure_action: rollback, monitor: 10s}
secrets:
  db_password:
    file: ./pw.txt
`

// deniedCompose breaks several rules: a Docker UI with the socket, privileged, host network, a plain password.
const deniedCompose = `name: shop
services:
  ui:
    image: portainer/portainer-ce:2
    privileged: true
    network_mode: host
    container_name: ui
    environment:
      ADMIN_PASSWORD: plain-text-credential
    ports: ["9000:9000"]
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
      - /:/host:ro
`

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheckExitCodesAndOutputs(t *testing.T) {
	dir := writeFiles(t, map[string]string{"clean.yaml": cleanCompose, "denied.yaml": deniedCompose, "pw.txt": "pw-value", "broken.yaml": "services:\n  web: [\n"})
	clean, denied, broken := filepath.Join(dir, "clean.yaml"), filepath.Join(dir, "denied.yaml"), filepath.Join(dir, "broken.yaml")

	// The compose file calls nginx the edge; only the platform's grant makes it so.
	r := runOffline(t, "check", "-c", clean)
	if r.code != 3 || !strings.Contains(r.stdout, "grants: [{rule: edge, stack: shop, service: nginx}]") {
		t.Fatalf("an edge role nobody granted: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Setenv("SAWMILL_GRANT", "edge:nginx") // as the operator's --grant edge:nginx

	r = runOffline(t, "check", "-c", clean)
	if r.code != 0 {
		t.Fatalf("clean: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "0 denied, 3 warnings") {
		t.Fatalf("clean: text output:\n%s", r.stdout)
	}

	r = runOffline(t, "check", "-c", denied)
	if r.code != 3 {
		t.Fatalf("denied: exit %d, want 3\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"DENY privileged: ui:", "DENY host_network: ui:", "DENY docker_socket: ui:", "DENY host_root: ui:", "DENY env_credentials: ui: environment variable ADMIN_PASSWORD", "WARN dropped_key: ui: compose key container_name"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("denied: output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout+r.stderr, "plain-text-credential") {
		t.Fatal("the output quotes an environment value")
	}
	if !strings.Contains(r.stderr, "policy denied stack shop") {
		t.Fatalf("denied: stderr %q", r.stderr)
	}

	// JSON: the decisions with rule and service; the same bytes twice.
	r = runOffline(t, "check", "-c", denied, "-o", "json")
	r2 := runOffline(t, "check", "-c", denied, "-o", "json")
	if r.code != 3 || r.stdout != r2.stdout {
		t.Fatalf("json: exit %d, deterministic %v", r.code, r.stdout == r2.stdout)
	}
	var rep struct {
		Stack     string `json:"stack"`
		Decisions []struct{ Kind, Rule, Service, Message string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if rep.Stack != "shop" || len(rep.Decisions) == 0 || rep.Decisions[0].Kind != "deny" || rep.Decisions[0].Service != "ui" {
		t.Fatalf("json report %+v", rep)
	}

	// JUnit: one test case per service and rule, a failure per denied rule.
	r = runOffline(t, "check", "-c", denied, "-o", "junit")
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suite    []struct {
			Cases []struct {
				Classname string    `xml:"classname,attr"`
				Name      string    `xml:"name,attr"`
				Failure   *struct{} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal([]byte(r.stdout), &suites); err != nil {
		t.Fatalf("junit: %v\n%s", err, r.stdout)
	}
	failed := map[string]bool{}
	for _, c := range suites.Suite[0].Cases {
		if c.Failure != nil {
			failed[c.Classname+"/"+c.Name] = true
		}
	}
	for _, want := range []string{"shop.ui/deny_privileged", "shop.ui/deny_docker_socket", "shop.ui/deny_env_credentials"} {
		if !failed[want] {
			t.Errorf("junit: no failure for %s (failures %v)", want, failed)
		}
	}
	if suites.Failures != len(failed) || suites.Tests < 20 {
		t.Fatalf("junit: %d tests, %d failures (%d failing cases)", suites.Tests, suites.Failures, len(failed))
	}

	// Invalid input and usage: exit 2.
	for what, args := range map[string][]string{
		"broken compose": {"check", "-c", broken},
		"missing file":   {"check", "-c", filepath.Join(dir, "nope.yaml")},
		"bad output":     {"check", "-c", clean, "-o", "xml"},
		"no file":        {"check"},
		"missing policy": {"check", "-c", clean, "--policies", filepath.Join(dir, "nope")},
	} {
		if r := runOffline(t, args...); r.code != 2 {
			t.Errorf("%s: exit %d, want 2\n%s", what, r.code, r.stderr)
		}
	}
}

func TestCheckTeamPoliciesAndSettings(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"clean.yaml":       cleanCompose,
		"pw.txt":           "x",
		"team/team.rego":   "package main\n\ndeny_owner contains {\"msg\": sprintf(\"%s: no owner label\", [s.key]), \"service\": s.key} if {\n\tsome s in input.services\n\tnot s.labels.owner\n}\n",
		"broken/bad.rego":  "package main\n\ndeny contains x if {\n\tx := http.send({\"url\": \"http://127.0.0.1:1\", \"method\": \"GET\"})\n}\n",
		"empty/README.txt": "no policies here",
	})
	clean := filepath.Join(dir, "clean.yaml")
	t.Setenv("SAWMILL_GRANT", "edge:nginx") // the platform grants nginx the edge role
	r := runOffline(t, "check", "-c", clean, "--policies", filepath.Join(dir, "team"))
	if r.code != 3 || strings.Count(r.stdout, "DENY owner:") != 2 {
		t.Fatalf("team policy: exit %d\n%s", r.code, r.stdout)
	}
	r = runOffline(t, "check", "-c", clean, "--no-default-policies", "--policies", filepath.Join(dir, "team"))
	if r.code != 3 || !strings.Contains(r.stdout, "2 denied, 0 warnings") {
		t.Fatalf("team policy alone: exit %d\n%s", r.code, r.stdout)
	}
	r = runOffline(t, "check", "-c", clean, "--policies", filepath.Join(dir, "broken"))
	if r.code != 2 || !strings.Contains(r.stderr, filepath.Join(dir, "broken", "bad.rego")+":4") {
		t.Fatalf("broken policy: exit %d\n%s", r.code, r.stderr)
	}
	r = runOffline(t, "check", "-c", clean, "--policies", filepath.Join(dir, "empty"))
	if r.code != 2 {
		t.Fatalf("policy dir without rego: exit %d\n%s", r.code, r.stderr)
	}

	// Allowed registries and the environment, from flags or SAWMILL_* variables.
	r = runOffline(t, "check", "-c", clean, "--allowed-registry", "other.example")
	if r.code != 3 || !strings.Contains(r.stdout, "DENY image_registry: api:") {
		t.Fatalf("registry: exit %d\n%s", r.code, r.stdout)
	}
	t.Setenv("SAWMILL_ALLOWED_REGISTRY", "registry.example/shop")
	t.Setenv("SAWMILL_ENV", "production")
	r = runOffline(t, "check", "-c", clean)
	if r.code != 3 || strings.Contains(r.stdout, "image_registry") || !strings.Contains(r.stdout, "DENY image_signature: api:") {
		t.Fatalf("settings from the environment: exit %d\n%s", r.code, r.stdout)
	}
}

func TestRender(t *testing.T) {
	dir := writeFiles(t, map[string]string{"clean.yaml": cleanCompose, "pw.txt": "the-secret-value"})
	r := runOffline(t, "render", "-c", filepath.Join(dir, "clean.yaml"), "--env", "staging")
	if r.code != 0 {
		t.Fatalf("render: exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stdout, "the-secret-value") {
		t.Fatal("render prints a secret value")
	}
	var doc struct {
		Kind        string `json:"kind"`
		Stack       string `json:"stack"`
		Environment string `json:"environment"`
		Services    []struct {
			Key   string `json:"key"`
			Image struct {
				Pinned    bool `json:"pinned"`
				Signature struct{ Status string }
			} `json:"image"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Stack != "shop" || doc.Environment != "staging" || len(doc.Services) != 2 || !doc.Services[0].Image.Pinned || doc.Services[0].Image.Signature.Status != "unknown" {
		t.Fatalf("render: %+v", doc)
	}

	// A value a variable put into the compose file is shown as <redacted>; a literal is shown.
	t.Setenv("API_HOST", "db.internal.example")
	withVar := strings.Replace(cleanCompose, "      DB_PASSWORD_FILE: /run/secrets/db_password\n", "      DB_PASSWORD_FILE: /run/secrets/db_password\n      API_URL: https://${API_HOST}/v1\n", 1)
	dir = writeFiles(t, map[string]string{"clean.yaml": withVar, "pw.txt": "x"})
	r = runOffline(t, "render", "-c", filepath.Join(dir, "clean.yaml"))
	if r.code != 0 || strings.Contains(r.stdout, "db.internal.example") || !strings.Contains(r.stdout, `https://<redacted>/v1`) || !strings.Contains(r.stdout, "/run/secrets/db_password") {
		t.Fatalf("render of an interpolated value: exit %d\n%s", r.code, r.stdout)
	}
}

// conftestBinary finds conftest (go install github.com/open-policy-agent/conftest@v0.71.1).
func conftestBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("conftest"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "conftest")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("conftest is not installed: go install github.com/open-policy-agent/conftest@v0.71.1")
	}
	t.Skip("conftest is not installed: go install github.com/open-policy-agent/conftest@v0.71.1")
	return ""
}

// TestConftestParity runs conftest on `agent render` output with the same policies and compares its deny and
// warn counts, and messages, with `agent check`.
func TestConftestParity(t *testing.T) {
	conftest := conftestBinary(t)
	t.Setenv("SAWMILL_GRANT", "edge:nginx") // the platform grants nginx the edge role
	_, self, _, _ := runtime.Caller(0)
	policies := filepath.Join(filepath.Dir(self), "..", "..", "policies")
	dir := writeFiles(t, map[string]string{
		"clean.yaml":  cleanCompose,
		"denied.yaml": deniedCompose,
		"mixed.yaml":  strings.Replace(cleanCompose, digestPin+"\n    environment", "\n    environment", 1) + "    labels:\n      io.sawmill.exception.host_root: reason\n",
		"pw.txt":      "x",
		"team/exc.rego": `package main

exception contains ["healthcheck"] if input.environment == "staging"

warn_team contains sprintf("%s: team warning", [s.key]) if some s in input.services
`,
	})
	cases := []struct {
		name string
		args []string
		dirs []string
	}{
		{"clean", []string{"-c", filepath.Join(dir, "clean.yaml")}, nil},
		{"denied", []string{"-c", filepath.Join(dir, "denied.yaml")}, nil},
		{"denied, registries, production", []string{"-c", filepath.Join(dir, "denied.yaml"), "--env", "production", "--allowed-registry", "registry.example"}, nil},
		{"mixed with team policies", []string{"-c", filepath.Join(dir, "mixed.yaml"), "--env", "staging"}, []string{filepath.Join(dir, "team")}},
		{"demo", []string{"-c", filepath.Join(filepath.Dir(self), "..", "..", "examples", "demo", "compose.yaml")}, nil},
	}
	t.Setenv("REGISTRY", "127.0.0.1:5000")
	t.Setenv("DEMO_API_TOKEN", "x")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runOffline(t, append([]string{"render"}, c.args...)...)
			if r.code != 0 {
				t.Fatalf("render: exit %d: %s", r.code, r.stderr)
			}
			doc := filepath.Join(t.TempDir(), "stack.json")
			if err := os.WriteFile(doc, []byte(r.stdout), 0o644); err != nil {
				t.Fatal(err)
			}
			checkArgs := append([]string{"check", "-o", "json"}, c.args...)
			conftestArgs := []string{"test", "--no-color", "--output", "json", "--policy", policies}
			for _, d := range c.dirs {
				checkArgs = append(checkArgs, "--policies", d)
				conftestArgs = append(conftestArgs, "--policy", d)
			}
			r = runOffline(t, checkArgs...)
			var rep struct {
				Decisions []struct{ Kind, Message string }
			}
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("check output: %v\n%s", err, r.stdout)
			}
			var agentDeny, agentWarn []string
			for _, d := range rep.Decisions {
				if d.Kind == "deny" {
					agentDeny = append(agentDeny, d.Message)
				} else {
					agentWarn = append(agentWarn, d.Message)
				}
			}

			cmd := exec.Command(conftest, append(conftestArgs, doc)...)
			out, err := cmd.Output()
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatalf("conftest: %v", err)
			}
			var results []struct {
				Failures []struct{ Msg string } `json:"failures"`
				Warnings []struct{ Msg string } `json:"warnings"`
			}
			if err := json.Unmarshal(out, &results); err != nil || len(results) != 1 {
				t.Fatalf("conftest output: %v\n%s", err, out)
			}
			var cDeny, cWarn []string
			for _, f := range results[0].Failures {
				cDeny = append(cDeny, f.Msg)
			}
			for _, w := range results[0].Warnings {
				cWarn = append(cWarn, w.Msg)
			}
			if !sameSet(agentDeny, cDeny) || !sameSet(agentWarn, cWarn) {
				t.Fatalf("agent check: %d denies, %d warnings; conftest: %d failures, %d warnings\nagent denies %q\nconftest failures %q\nagent warnings %q\nconftest warnings %q",
					len(agentDeny), len(agentWarn), len(cDeny), len(cWarn), agentDeny, cDeny, agentWarn, cWarn)
			}
			wantCode := 0
			if len(agentDeny) > 0 {
				wantCode = 3
			}
			if r.code != wantCode {
				t.Fatalf("agent check exit %d, want %d", r.code, wantCode)
			}
			t.Logf("agent check and conftest agree: %d denies, %d warnings", len(agentDeny), len(agentWarn))
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	count := map[string]int{}
	for _, x := range a {
		count[x]++
	}
	for _, x := range b {
		count[x]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
