package main

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// The hostile-release corpus (docs/security.md): releases written by someone who may write release content
// and nothing else, each trying to cross the trust boundary. Every one is refused (exit 2 or 3), creates or
// changes nothing on the swarm, and no secret value or token appears anywhere the agent writes: stdout,
// stderr (the log), the state file, and the commit status GitLab is told.

// Values the attacks try to reach. None may appear in the agent's output.
const (
	hostileGitLabToken  = "glpat-hostile-agent-token"
	hostileWebhookToken = "hostile-webhook-secret"
	hostileDBPassword   = "pw-protected-production-value"
	hostileHostFile     = "content-of-a-host-file-outside-the-release"
)

type hostileCase struct {
	name string
	// compose is the stack's compose.yaml; web(...) and top(...) build it from the honest baseline.
	compose string
	// files are more files of the release (paths under the stack's directory).
	files map[string]string
	// manifest changes release.json.
	manifest func(m map[string]any)
	// ref and tag of the deployment (GitLab's record); default main, a protected branch.
	ref string
	// config adds lines to agent.yaml.
	config string
	// dir: deliver the release through the dir source (links can be made there); links: path -> target.
	dir   bool
	links map[string]string
	// want is the exit code and a text the output must contain.
	want     int
	wantText string
}

// baseline is an honest web service that passes the default policies (outside production).
func web(image string, extra string) string {
	return fmt.Sprintf(`services:
  web:
    image: %s
    healthcheck: {test: ["CMD", "/testsvc", "-probe", "http://127.0.0.1:8080/healthz"], interval: 2s, retries: 3}
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      resources: {limits: {cpus: "0.5", memory: 64M}}
      restart_policy: {condition: on-failure}
      update_config: {failure_action: rollback, monitor: 10s}
%s`, image, extra)
}

func hostileCases(image, hostFile string) []hostileCase {
	svc := func(extra string) string { return web(image, extra) }
	// deployLabels puts deploy labels on the baseline's service.
	deployLabels := func(compose string, labels ...string) string {
		return strings.Replace(compose, "      replicas: 1\n", "      replicas: 1\n      labels:\n        "+strings.Join(labels, "\n        ")+"\n", 1)
	}
	mount := func(src string) string {
		return "    volumes:\n      - type: bind\n        source: " + src + "\n        target: /mnt\n"
	}
	return []hostileCase{
		// The agent's environment: never readable.
		{name: "secret from the agent's GitLab token", compose: svc("    secrets: [t]\n") + "secrets:\n  t:\n    environment: SAWMILL_GITLAB_TOKEN\n", want: 2, wantText: "SAWMILL_GITLAB_TOKEN is not set"},
		{name: "secret from the webhook token", compose: svc("    secrets: [t]\n") + "secrets:\n  t:\n    environment: SAWMILL_WEBHOOK_TOKEN\n", want: 2, wantText: "SAWMILL_WEBHOOK_TOKEN is not set"},
		{name: "interpolated webhook token", compose: svc("    environment:\n      T: ${SAWMILL_WEBHOOK_TOKEN}\n"), want: 2, wantText: "variable SAWMILL_WEBHOOK_TOKEN is not set"},
		{name: "unbraced token", compose: svc("    environment:\n      T: $SAWMILL_GITLAB_TOKEN\n"), want: 2, wantText: "variable SAWMILL_GITLAB_TOKEN is not set"},
		{name: "token in a label", compose: svc("    labels:\n      t: \"x${SAWMILL_GITLAB_TOKEN}\"\n"), want: 2, wantText: "SAWMILL_GITLAB_TOKEN"},
		{name: "agent's HOME", compose: svc("    environment:\n      H: ${HOME}\n"), want: 2, wantText: "variable HOME is not set"},
		{name: "agent's PATH in the image", compose: web(image+"${PATH}", ""), want: 2, wantText: "variable PATH is not set"},
		{name: "secret from the agent's HOME", compose: svc("    secrets: [h]\n") + "secrets:\n  h:\n    environment: HOME\n", want: 2, wantText: "HOME is not set"},
		{name: "token through an extends file", dir: true, compose: "services:\n  web:\n    extends: {file: base.yaml, service: base}\n", files: map[string]string{"base.yaml": svc("    environment:\n      T: ${SAWMILL_GITLAB_TOKEN}\n")}, want: 2, wantText: "SAWMILL_GITLAB_TOKEN"},
		// CI/CD variables: only what GitLab would give the release's ref in this environment.
		{name: "protected variable from an unprotected branch", ref: "feature/x", compose: svc("    secrets: [db]\n") + "secrets:\n  db:\n    environment: DB_PASSWORD\n", want: 2, wantText: "DB_PASSWORD is not set"},
		{name: "variable of another environment", compose: svc("    environment:\n      P: ${PROD_ONLY}\n"), want: 2, wantText: "variable PROD_ONLY is not set"},
		{name: "variable value in an error", compose: strings.Replace(svc(""), "replicas: 1", "replicas: ${DB_PASSWORD}", 1), want: 2, wantText: "replicas"},
		// Files: only the release's own.
		{name: "secret ../ path", compose: svc("    secrets: [s]\n") + "secrets:\n  s:\n    file: ../../../../../../../../etc/passwd\n", want: 2, wantText: "outside the release directory"},
		{name: "secret absolute path", compose: svc("    secrets: [s]\n") + "secrets:\n  s:\n    file: " + hostFile + "\n", want: 2, wantText: "outside the release directory"},
		{name: "secret /dev/zero", compose: svc("    secrets: [s]\n") + "secrets:\n  s:\n    file: /dev/zero\n", want: 2, wantText: "outside the release directory"},
		{name: "config absolute path", compose: svc("    configs: [c]\n") + "configs:\n  c:\n    file: " + hostFile + "\n", want: 2, wantText: "outside the release directory"},
		{name: "env_file outside", compose: svc("    env_file: " + hostFile + "\n"), want: 2, wantText: "env_file"},
		{name: "env_file long syntax outside", compose: svc("    env_file:\n      - path: ../../../../../../../etc/environment\n        required: false\n"), want: 2, wantText: "outside the release directory"},
		{name: "label_file outside", compose: svc("    label_file: " + hostFile + "\n"), want: 2, wantText: "label_file"},
		{name: "include outside", compose: "include:\n  - " + hostFile + "\n" + svc(""), want: 2, wantText: "include"},
		{name: "include ../", compose: "include:\n  - ../../../../../../../etc/hostname\n" + svc(""), want: 2, wantText: "outside the release directory"},
		{name: "extends file outside", compose: "services:\n  web:\n    extends: {file: " + hostFile + ", service: web}\n", want: 2, wantText: "extends.file"},
		{name: "oversized secret file", dir: true, compose: svc("    configs: [c]\n") + "configs:\n  c:\n    file: ./big.bin\n", files: map[string]string{"big.bin": strings.Repeat("x", 5<<20)}, want: 2, wantText: "more than the limit"},
		{name: "dir source: compose file links out", dir: true, compose: svc(""), links: map[string]string{"stacks/%s/compose.yaml": hostFile}, want: 2, wantText: "outside the release"},
		{name: "dir source: secret file links out", dir: true, compose: svc("    secrets: [s]\n") + "secrets:\n  s:\n    file: ./pw\n", links: map[string]string{"stacks/%s/pw": hostFile}, want: 2, wantText: "outside the release"},
		// release.json.
		{name: "empty environment file list", compose: svc(""), manifest: func(m map[string]any) {
			for _, st := range m["stacks"].(map[string]any) {
				st.(map[string]any)["environments"] = map[string]any{"staging": []string{}}
			}
		}, want: 2, wantText: "environments.staging is empty"},
		{name: "release file escapes", compose: svc(""), manifest: func(m map[string]any) {
			for _, st := range m["stacks"].(map[string]any) {
				st.(map[string]any)["files"] = []string{"stacks/../../../etc/passwd"}
			}
		}, want: 2, wantText: "release files must be relative paths under stacks/"},
		{name: "unknown schema version", compose: svc(""), manifest: func(m map[string]any) { m["schema_version"] = 99 }, want: 2, wantText: "schema_version 99"},
		// Exceptions and roles: requested by a release, granted only by the platform.
		{name: "self-granted docker socket", compose: deployLabels(svc(mount("/var/run/docker.sock")), "io.sawmill.exception.docker_socket: trust me", "io.sawmill.exception.host_path: trust me"), want: 3, wantText: "exception_not_granted"},
		{name: "self-declared edge", compose: svc("    ports: [\"443:8080\"]\n    labels:\n      io.sawmill.role: edge\n") + "", want: 3, wantText: "published_ports"},
		{name: "edge by deploy label", compose: deployLabels(svc("    ports: [\"80:8080\", \"443:8080\"]\n"), "io.sawmill.role: edge"), want: 3, wantText: "a role the platform does not grant"},
		{name: "socket spelled /var/run/./docker.sock", compose: svc(mount("/var/run/./docker.sock")), want: 3, wantText: "docker_socket"},
		{name: "socket spelled //var/run/docker.sock", compose: svc(mount("//var/run/docker.sock")), want: 3, wantText: "docker_socket"},
		{name: "containerd socket", compose: svc(mount("/run/containerd/containerd.sock")), want: 3, wantText: "host_path"},
		{name: "root's ssh keys", compose: svc(mount("/root/.ssh")), want: 3, wantText: "host_root"},
		{name: "cron directory", compose: svc(mount("/etc/cron.d")), want: 3, wantText: "host_root"},
		{name: "any host path", compose: svc(mount("/srv/data")), want: 3, wantText: "host_path"},
		{name: "exempting the grant rule", compose: deployLabels(svc("    ports: [\"443:8080\"]\n"), "io.sawmill.role: edge", "io.sawmill.exception.exception_not_granted: please"), want: 3, wantText: "exception_not_granted"},
		{name: "privileged with a self-granted exception", compose: deployLabels(svc("    privileged: true\n"), "io.sawmill.exception.privileged: trust me"), want: 3, wantText: "privileged"},
		// Production is a tier the platform configures, not a name.
		{name: "environment named prod", compose: svc(""), config: "environment: prod\ntier: production\n", want: 3, wantText: "image_signature"},
	}
}

func TestHostileReleases(t *testing.T) {
	dc := testenv.Docker(t)
	reg := testenv.Registry(t)
	_, digest := testenv.Image(t, reg+"/web:v1", "MESSAGE=v1")
	image := reg + "/web:v1@" + digest
	hostFile := filepath.Join(t.TempDir(), "host-file")
	if err := os.WriteFile(hostFile, []byte(hostileHostFile), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SAWMILL_GITLAB_TOKEN", hostileGitLabToken)
	t.Setenv("SAWMILL_WEBHOOK_TOKEN", hostileWebhookToken)

	cases := hostileCases(image, hostFile)
	if len(cases) < 30 {
		t.Fatalf("the corpus has %d cases, the threat model promises at least 30", len(cases))
	}
	// The control: the same harness deploys an honest release, so a refusal is the attack's doing.
	cases = append(cases, hostileCase{name: "honest release (control)", compose: web(image, "    secrets: [db]\n") + "secrets:\n  db:\n    environment: DB_PASSWORD\n", want: 0})

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("hostile%02d", i)
			t.Cleanup(func() { removeStack(dc, name) })
			gl := testenv.NewGitLab(hostileGitLabToken, "sawmill/platform")
			gl.SetRefs(map[string]bool{"main": true, "feature/x": false}, nil)
			gl.SetVariables(
				testenv.Variable{Key: "DB_PASSWORD", Value: hostileDBPassword, Scope: "*", Protected: true},
				testenv.Variable{Key: "PROD_ONLY", Value: "only-in-production-value", Scope: "production"},
			)
			srv := httptest.NewServer(gl)
			defer srv.Close()

			files := map[string]string{"stacks/" + name + "/compose.yaml": tc.compose}
			for f, content := range tc.files {
				files["stacks/"+name+"/"+f] = content
			}
			m := map[string]any{
				"schema_version": 1, "project": "sawmill/platform", "commit": strings.Repeat("e", 40), "ref": "main",
				"pipeline": map[string]any{"id": 1, "url": ""}, "registry": reg, "channel": "release-main",
				"images": map[string]any{"web": map[string]any{"repository": reg + "/web", "tag": "v1", "digest": digest, "rebuilt": true, "ref": image}},
				"stacks": map[string]any{name: map[string]any{"files": []string{"stacks/" + name + "/compose.yaml"}}},
			}
			if tc.manifest != nil {
				tc.manifest(m)
			}
			b, _ := json.Marshal(m)
			files["release.json"] = string(b)

			state := t.TempDir()
			config := filepath.Join(t.TempDir(), "agent.yaml")
			env := "environment: staging\ntier: staging\n"
			if tc.config != "" {
				env = tc.config
			}
			source := fmt.Sprintf("source: gitlab\ngitlab: {url: %s, project: sawmill/platform, variables: true}\n", srv.URL)
			if tc.dir {
				dir := t.TempDir()
				for f, content := range files {
					p := filepath.Join(dir, f)
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				for link, target := range tc.links {
					p := filepath.Join(dir, fmt.Sprintf(link, name))
					_ = os.Remove(p)
					if err := os.Symlink(target, p); err != nil {
						t.Fatal(err)
					}
				}
				source = "source: dir\ndir: " + dir + "\n"
			} else {
				artifacts := map[string]string{}
				for f, content := range files {
					artifacts["release/"+f] = content
				}
				ref := tc.ref
				if ref == "" {
					ref = "main"
				}
				envName := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(env, "\n", 2)[0], "environment:"))
				gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: envName, Status: "success", SHA: m["commit"].(string), Ref: ref, Finished: time.Now()}, artifacts)
			}
			writeFile(t, config, env+source+"timeout: 1m\nlease: {disabled: true}\n")

			before := snapshot(t, dc, name)
			r := runAgent(t, dc, "run", "--once", "--config", config, "--state-dir", state, "--listen", "", "--policy-mode", "enforce")
			if r.code != tc.want {
				t.Fatalf("exit %d, want %d\n%s%s", r.code, tc.want, r.stdout, r.stderr)
			}
			out := r.stdout + r.stderr
			if tc.wantText != "" && !strings.Contains(out, tc.wantText) {
				t.Errorf("the output does not say %q:\n%s", tc.wantText, out)
			}
			if tc.want != 0 {
				if after := snapshot(t, dc, name); after != before {
					t.Errorf("a refused release changed the swarm:\nbefore %s\nafter  %s", before, after)
				}
			}
			stateFile, _ := os.ReadFile(filepath.Join(state, "state.json"))
			var statuses []string
			for _, s := range gl.Statuses() {
				statuses = append(statuses, s.State+" "+s.Description)
			}
			if tc.want != 0 && !tc.dir && (len(statuses) != 1 || !strings.HasPrefix(statuses[0], "failed")) {
				t.Errorf("GitLab was told %v, want one failed status", statuses)
			}
			everywhere := out + "\n" + string(stateFile) + "\n" + strings.Join(statuses, "\n")
			for _, secret := range []string{hostileGitLabToken, hostileWebhookToken, hostileDBPassword, hostileHostFile, "root:x:0:0"} {
				if strings.Contains(everywhere, secret) {
					t.Errorf("%q leaked into what the agent wrote:\n%s", secret, everywhere)
				}
			}
		})
	}
}
