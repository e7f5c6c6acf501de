package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The agent's own stack passes the default policies exactly when the operator grants the socket: the grant
// and the allowed host path of the agent.yaml lines documented in stacks/agent/README.md.
func TestAgentStackPassesThePoliciesWithTheOperatorsGrant(t *testing.T) {
	t.Setenv("REGISTRY", "registry.gitlab.com/sabeiro/sawmill")
	t.Setenv("DOCKER_GID", "999")
	file := filepath.Join("..", "..", "stacks", "agent", "compose.yaml")
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// The release as the agent judges it: the image pinned (by pipegen release).
	pinned := strings.Replace(string(raw), "${REGISTRY}/agent:${TAG:-latest}", "registry.gitlab.com/sabeiro/sawmill/agent:1"+digestPin, 1)
	if pinned == string(raw) {
		t.Fatal("stacks/agent/compose.yaml: the agent's image is not ${REGISTRY}/agent:${TAG:-latest}")
	}
	released := filepath.Join(writeFiles(t, map[string]string{"compose.yaml": pinned}), "compose.yaml")
	base := []string{"check", "-c", released, "--env", "staging", "--tier", "staging", "--allowed-registry", "registry.gitlab.com/sabeiro/sawmill"}
	grant := []string{"--grant", "docker_socket:agent"}
	allow := []string{"--allowed-host-path", "/var/run/docker.sock"}
	join := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return append(out, "agent")
	}
	if r := runOffline(t, join(base, grant, allow)...); r.code != 0 || strings.Contains(r.stdout, "DENY") {
		t.Fatalf("with the operator's grant and allowed host path: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Without either, the release alone cannot open the socket.
	if r := runOffline(t, join(base, allow)...); r.code != 3 || !strings.Contains(r.stdout, "DENY exception_not_granted") {
		t.Errorf("without the grant: exit %d, want 3 (exception_not_granted)\n%s", r.code, r.stdout)
	}
	if r := runOffline(t, join(base, grant)...); r.code != 3 || !strings.Contains(r.stdout, "DENY host_path") {
		t.Errorf("without the allowed host path: exit %d, want 3 (host_path)\n%s", r.code, r.stdout)
	}
	// The pipeline's policy job (pipelines/test.yml: --pre-release, no agent configuration) passes and names
	// the settings the deploy needs.
	pipeline := runOffline(t, "check", "-c", file, "--env", "production", "--pre-release", "registry.gitlab.com/sabeiro/sawmill", "agent")
	if pipeline.code != 0 {
		t.Fatalf("the pipeline's policy job: exit %d\n%s%s", pipeline.code, pipeline.stdout, pipeline.stderr)
	}
	for _, want := range []string{"host_path_allow_needed", "allowed_host_paths: [/var/run/docker.sock]", "exception_grant_needed", "{rule: docker_socket, stack: agent, service: agent}"} {
		if !strings.Contains(pipeline.stdout, want) {
			t.Errorf("the pipeline's check does not say %q:\n%s", want, pipeline.stdout)
		}
	}
}

// The service's placement, update order and failure action are what the self-upgrade relies on.
func TestAgentStackUpgradesStartFirstOnManagers(t *testing.T) {
	t.Setenv("REGISTRY", "r.example/p")
	t.Setenv("DOCKER_GID", "999")
	r := runOffline(t, "render", "-c", filepath.Join("..", "..", "stacks", "agent", "compose.yaml"), "--env", "production", "agent")
	if r.code != 0 {
		t.Fatalf("render: exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{`"node.role == manager"`, `"Order": "start-first"`, `"FailureAction": "rollback"`, `"/agent",`, `"healthcheck"`, `"User": "65534:999"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the agent's service spec lacks %s", want)
		}
	}
}

func TestHealthcheckProbesTheAgent(t *testing.T) {
	ready := false
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	sock := filepath.Join(t.TempDir(), "agent.sock")
	for _, addr := range []string{"127.0.0.1:0", "unix://" + sock} {
		l, err := listen(addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: mux}
		go srv.Serve(l)
		probeAddr := addr
		if _, ok := l.Addr().(*net.TCPAddr); ok {
			// listening on every address is probed on loopback
			probeAddr = ":" + strings.TrimPrefix(l.Addr().String(), "127.0.0.1:")
		}
		ready = false
		if r := runOffline(t, "healthcheck", "--addr", probeAddr); r.code != 1 || !strings.Contains(r.stderr, "503") {
			t.Errorf("%s not ready: exit %d, %s", addr, r.code, r.stderr)
		}
		ready = true
		if r := runOffline(t, "healthcheck", "--addr", probeAddr); r.code != 0 {
			t.Errorf("%s ready: exit %d, %s", addr, r.code, r.stderr)
		}
		srv.Close()
		if r := runOffline(t, "healthcheck", "--addr", probeAddr); r.code != 1 {
			t.Errorf("%s gone: exit %d", addr, r.code)
		}
	}
	// An agent serving TLS (agent.yaml tls:) is probed over HTTPS.
	tlsSrv := httptest.NewTLSServer(mux)
	ready = true
	if r := runOffline(t, "healthcheck", "--addr", strings.TrimPrefix(tlsSrv.URL, "https://")); r.code != 0 {
		t.Errorf("TLS: exit %d, %s", r.code, r.stderr)
	}
	tlsSrv.Close()
	// $SAWMILL_LISTEN is the default (the container's environment), and a stale socket is replaced.
	t.Setenv("SAWMILL_LISTEN", "unix://"+sock)
	l, err := listen("unix://" + sock)
	if err != nil {
		t.Fatalf("a stale socket is not replaced: %v", err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()
	if r := runOffline(t, "healthcheck"); r.code != 0 {
		t.Errorf("SAWMILL_LISTEN: exit %d, %s", r.code, r.stderr)
	}
}

func TestInstallInlinesTrustKeys(t *testing.T) {
	dir := t.TempDir()
	pem := "-----BEGIN PUBLIC KEY-----\nMFkwEw==\n-----END PUBLIC KEY-----\n"
	if err := os.WriteFile(filepath.Join(dir, "cosign.pub"), []byte(pem), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := "environment: production\ntrust:\n  rules:\n    - pattern: r.example/**\n      authorities:\n        - {name: k, key: cosign.pub}\n        - {name: inline, key: \"" + strings.ReplaceAll(pem, "\n", `\n`) + "\"}\n"
	out, err := inlineTrustKeys([]byte(raw), dir)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Environment string
		Trust       struct {
			Rules []struct {
				Authorities []struct{ Name, Key string }
			}
		}
	}
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if doc.Environment != "production" || len(doc.Trust.Rules) != 1 {
		t.Fatalf("the rest of the configuration changed:\n%s", out)
	}
	for _, a := range doc.Trust.Rules[0].Authorities {
		if a.Key != pem {
			t.Errorf("authority %s: key %q, want the PEM", a.Name, a.Key)
		}
	}
	if _, err := inlineTrustKeys([]byte("trust: {rules: [{pattern: x, authorities: [{name: k, key: /nope.pub}]}]}\n"), dir); err == nil || !strings.Contains(err.Error(), "/nope.pub") {
		t.Errorf("a missing key file: %v", err)
	}
	if _, err := inlineTrustKeys([]byte("trust: {rules: [{pattern: x, authorities: [{name: k, keyless: {issuer: i, trusted_root: /etc/root.json}}]}]}\n"), dir); err == nil || !strings.Contains(err.Error(), "trusted_root") {
		t.Errorf("a keyless trusted_root file: %v", err)
	}
}

// install refuses, before it touches the swarm, what its service could not run with.
func TestInstallRefusesWhatTheServiceCannotUse(t *testing.T) {
	t.Setenv("SAWMILL_GITLAB_TOKEN", "")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gitlab := "environment: production\ngitlab: {url: https://gitlab.example.com, project: sawmill/platform}\n"
	for _, c := range []struct{ name, config, want string }{
		{"no configuration", "", "--config"},
		{"a directory of this machine", "environment: production\nsource: dir\ndir: /srv/release\n", "source dir"},
		{"a policy directory of this machine", gitlab + "policies: [/etc/sawmill/policies]\n", "policies"},
		{"no GitLab token", gitlab, "--token-file"},
		{"a keyless trusted root file", gitlab + "trust: {rules: [{pattern: x, authorities: [{name: k, keyless: {issuer: i, trusted_root: /etc/root.json}}]}]}\n", "trusted_root"},
		{"an unknown key", gitlab + "grant: []\n", `unknown key "grant"`},
	} {
		args := []string{"install"}
		if c.config != "" {
			args = append(args, "--config", write("agent.yaml", c.config), "--token-file", write("token", "glpat-x"))
			if c.want == "--token-file" {
				args = args[:len(args)-2]
			}
		}
		r := runOffline(t, args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, want 2 naming %q\n%s", c.name, r.code, c.want, r.stderr)
		}
	}
}
