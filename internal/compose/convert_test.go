package compose

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/stack"
)

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const base = `name: shop
services:
  web:
    image: nginx
    privileged: true
    network_mode: host
    security_opt: [seccomp=unconfined]
    pid: host
    ports:
      - "443:8443"
      - target: 80
        published: 80
        mode: host
    deploy:
      mode: global
      update_config:
        failure_action: rollback
        monitor: 30s
      restart_policy:
        condition: on-failure
        max_attempts: 3
  api:
    image: registry.example.com/shop/api:${API_TAG:-1.0}
    command: ["serve", "--port", "8080"]
    entrypoint: ["/bin/api"]
    user: "1000:1000"
    working_dir: /srv
    environment:
      LOG_LEVEL: info
      FROM_DOTENV: ${DOTENV_VALUE}
    secrets:
      - source: db_password
        target: password
        uid: "1000"
        mode: 0400
    configs:
      - app_conf
    healthcheck:
      test: ["CMD", "/bin/api", "health"]
      interval: 5s
      retries: 2
    volumes:
      - data:/var/lib/api
      - /etc/ssl:/etc/ssl:ro
    networks:
      backend:
        aliases: [api.internal]
    deploy:
      replicas: 3
      endpoint_mode: dnsrr
      labels: {team: shop}
      resources:
        limits: {cpus: "0.5", memory: 256M}
        reservations: {memory: 64M}
      placement:
        constraints: [node.role == worker]
  debug:
    image: busybox
    profiles: [debug]
networks:
  backend: {}
volumes:
  data: {}
secrets:
  db_password:
    file: ./db_password.txt
configs:
  app_conf:
    content: "level=info"
`

func load(t *testing.T, files map[string]string, o Options) (*stack.Stack, error) {
	t.Helper()
	dir := t.TempDir()
	// compose.yaml first, then the other compose files by name: a fixed merge order (ranging over the map
	// put the override first now and then, and the test failed one run in ten).
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "compose.yaml") != (names[j] == "compose.yaml") {
			return names[i] == "compose.yaml"
		}
		return names[i] < names[j]
	})
	for _, name := range names {
		p := write(t, dir, name, files[name])
		if strings.HasPrefix(name, "compose") {
			o.Files = append(o.Files, p)
		}
	}
	if o.Env == nil {
		o.Env = []string{}
	}
	return Load(context.Background(), o)
}

func service(t *testing.T, st *stack.Stack, name string) swarm.ServiceSpec {
	t.Helper()
	for _, s := range st.Services {
		if s.Name == name {
			return s.Spec
		}
	}
	t.Fatalf("no service %s in %v", name, st.Services)
	return swarm.ServiceSpec{}
}

func TestConvertLikeDockerStackDeploy(t *testing.T) {
	st, err := load(t, map[string]string{
		"compose.yaml":    base,
		"db_password.txt": "hunter2",
		".env":            "DOTENV_VALUE=from-dotenv\n",
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "shop" {
		t.Fatalf("stack name %q, want shop (from name:)", st.Name)
	}
	if len(st.Services) != 2 {
		t.Fatalf("%d services, want 2 (debug is behind a profile)", len(st.Services))
	}

	api := service(t, st, "shop_api")
	cs := api.TaskTemplate.ContainerSpec
	if cs.Image != "registry.example.com/shop/api:1.0" {
		t.Errorf("image %q", cs.Image)
	}
	if strings.Join(cs.Command, " ") != "/bin/api" || strings.Join(cs.Args, " ") != "serve --port 8080" {
		t.Errorf("entrypoint/command -> Command %v Args %v", cs.Command, cs.Args)
	}
	if strings.Join(cs.Env, ",") != "FROM_DOTENV=from-dotenv,LOG_LEVEL=info" {
		t.Errorf("env %v (sorted, .env interpolated)", cs.Env)
	}
	if cs.User != "1000:1000" || cs.Dir != "/srv" {
		t.Errorf("user %q dir %q", cs.User, cs.Dir)
	}
	if api.Labels[stack.LabelNamespace] != "shop" || api.Labels[stack.LabelOwner] != stack.OwnerValue || api.Labels["team"] != "shop" {
		t.Errorf("service labels %v", api.Labels)
	}
	if cs.Labels[stack.LabelNamespace] != "shop" {
		t.Errorf("container labels %v", cs.Labels)
	}
	if *api.Mode.Replicated.Replicas != 3 {
		t.Errorf("replicas %d", *api.Mode.Replicated.Replicas)
	}
	if api.EndpointSpec == nil || api.EndpointSpec.Mode != swarm.ResolutionModeDNSRR {
		t.Errorf("endpoint %+v", api.EndpointSpec)
	}
	lim := api.TaskTemplate.Resources.Limits
	if lim.NanoCPUs != 500_000_000 || lim.MemoryBytes != 256<<20 || api.TaskTemplate.Resources.Reservations.MemoryBytes != 64<<20 {
		t.Errorf("resources %+v", api.TaskTemplate.Resources)
	}
	if got := api.TaskTemplate.Placement.Constraints; len(got) != 1 || got[0] != "node.role == worker" {
		t.Errorf("placement %v", got)
	}
	if hc := cs.Healthcheck; hc == nil || hc.Interval != 5*time.Second || hc.Retries != 2 || strings.Join(hc.Test, " ") != "CMD /bin/api health" {
		t.Errorf("healthcheck %+v", cs.Healthcheck)
	}
	if len(cs.Secrets) != 1 {
		t.Fatalf("secrets %v", cs.Secrets)
	}
	sec := cs.Secrets[0]
	if !strings.HasPrefix(sec.SecretName, "shop_db_password-") || sec.File.Name != "password" || sec.File.UID != "1000" || sec.File.GID != "0" || sec.File.Mode != 0o400 {
		t.Errorf("secret ref %+v %+v", sec, sec.File)
	}
	if len(cs.Configs) != 1 || cs.Configs[0].File.Name != "app_conf" || cs.Configs[0].File.Mode != 0o444 {
		t.Errorf("config refs %+v", cs.Configs)
	}
	if len(cs.Mounts) != 2 || cs.Mounts[0].Source != "shop_data" || cs.Mounts[0].Type != "volume" || cs.Mounts[1].Type != "bind" || !cs.Mounts[1].ReadOnly {
		t.Errorf("mounts %+v", cs.Mounts)
	}
	nets := api.TaskTemplate.Networks
	if len(nets) != 1 || nets[0].Target != "shop_backend" || strings.Join(nets[0].Aliases, ",") != "api.internal,api" {
		t.Errorf("networks %+v", nets)
	}

	web := service(t, st, "shop_web")
	if web.Mode.Global == nil {
		t.Errorf("web mode %+v, want global", web.Mode)
	}
	if web.UpdateConfig == nil || web.UpdateConfig.FailureAction != "rollback" || web.UpdateConfig.Monitor != 30*time.Second || web.UpdateConfig.Parallelism != 1 {
		t.Errorf("update_config %+v", web.UpdateConfig)
	}
	rp := web.TaskTemplate.RestartPolicy
	if rp == nil || rp.Condition != "on-failure" || *rp.MaxAttempts != 3 {
		t.Errorf("restart policy %+v", rp)
	}
	ports := web.EndpointSpec.Ports
	if len(ports) != 2 || ports[0].PublishedPort != 80 || ports[0].PublishMode != "host" || ports[1].PublishedPort != 443 || ports[1].TargetPort != 8443 || ports[1].PublishMode != "ingress" {
		t.Errorf("ports %+v", ports)
	}
	if web.TaskTemplate.ContainerSpec.Image != "nginx:latest" {
		t.Errorf("image %q, want the engine's form nginx:latest", web.TaskTemplate.ContainerSpec.Image)
	}

	// Swarm drops these; they are reported, with their values, for the policies.
	dropped := map[string]string{}
	for _, w := range st.Warnings {
		if w.Service == "web" {
			dropped[w.Field] = w.Value
		}
	}
	for field, value := range map[string]string{"privileged": "true", "network_mode": "host", "security_opt": "seccomp=unconfined", "pid": "host"} {
		if dropped[field] != value {
			t.Errorf("dropped key %s: got %q, want %q (warnings %v)", field, dropped[field], value, st.Warnings)
		}
	}

	// Networks: overlay by default, scoped; the implicit default network exists because web uses it.
	var names []string
	for _, n := range st.Networks {
		names = append(names, n.Name+"/"+n.Driver)
	}
	if strings.Join(names, ",") != "shop_backend/overlay,shop_default/overlay" {
		t.Errorf("networks %v", names)
	}
	for _, s := range st.Secrets {
		if string(s.Data) != "hunter2" {
			t.Errorf("secret data not read from the file")
		}
	}
}

func TestOverridesProfilesAndStackName(t *testing.T) {
	st, err := load(t, map[string]string{
		"compose.yaml":          base,
		"compose.override.yaml": "services:\n  api:\n    deploy:\n      replicas: 5\n",
		"db_password.txt":       "x",
	}, Options{Stack: "other", Profiles: []string{"debug"}, Env: []string{"API_TAG=2.0"}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "other" {
		t.Fatalf("stack %q: the STACK argument wins over name:", st.Name)
	}
	api := service(t, st, "other_api")
	if *api.Mode.Replicated.Replicas != 5 {
		t.Errorf("override not merged: replicas %d", *api.Mode.Replicated.Replicas)
	}
	if api.TaskTemplate.ContainerSpec.Image != "registry.example.com/shop/api:2.0" {
		t.Errorf("interpolation: %s", api.TaskTemplate.ContainerSpec.Image)
	}
	service(t, st, "other_debug")
}

func TestSecretNameFollowsContent(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	names := map[string]string{}
	for _, v := range []string{"one", "two", "one"} {
		st, err := load(t, map[string]string{"compose.yaml": base, "db_password.txt": v}, Options{Env: []string{"DOTENV_VALUE=x"}, NameKey: key})
		if err != nil {
			t.Fatal(err)
		}
		names[v] = st.Secrets[0].Name
		if strings.Contains(st.Secrets[0].Name, v) {
			t.Fatal("the name holds the value")
		}
	}
	if names["one"] == names["two"] {
		t.Fatalf("a changed value kept the name %s", names["one"])
	}
	st, _ := load(t, map[string]string{"compose.yaml": base, "db_password.txt": "one"}, Options{Env: []string{"DOTENV_VALUE=x"}, NameKey: key})
	if st.Secrets[0].Name != names["one"] {
		t.Fatal("the same value got another name")
	}
	// The name is keyed: without the swarm's key a guessed value does not give the name.
	other, _ := load(t, map[string]string{"compose.yaml": base, "db_password.txt": "one"}, Options{Env: []string{"DOTENV_VALUE=x"}, NameKey: []byte("another key, another swarm......")})
	if other.Secrets[0].Name == names["one"] {
		t.Fatal("the name does not depend on the key")
	}
	// Without a key (check, render) the name leaves the value out.
	a, _ := load(t, map[string]string{"compose.yaml": base, "db_password.txt": "one"}, Options{Env: []string{"DOTENV_VALUE=x"}})
	b, _ := load(t, map[string]string{"compose.yaml": base, "db_password.txt": "two"}, Options{Env: []string{"DOTENV_VALUE=x"}})
	if a.Secrets[0].Name != b.Secrets[0].Name {
		t.Fatal("without a key the name depends on the value")
	}
}

func TestEnvironmentSecret(t *testing.T) {
	c := "services:\n  a:\n    image: x\n    secrets: [tok]\nsecrets:\n  tok:\n    environment: TOKEN\n"
	st, err := load(t, map[string]string{"compose.yaml": c}, Options{Stack: "s", Env: []string{"TOKEN=abc"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(st.Secrets[0].Data) != "abc" {
		t.Fatal("secret from the environment not read")
	}
}

func TestInvalidInputNamesFileAndField(t *testing.T) {
	cases := map[string]struct {
		compose string
		want    []string
	}{
		"unknown key":      {"services:\n  a:\n    image: x\n    colour: blue\n", []string{"compose.yaml", "colour", "unknown key"}},
		"no image":         {"services:\n  a:\n    environment: {A: b}\n", []string{"compose.yaml", `"a"`, "image"}},
		"missing file":     {"services:\n  a:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    file: ./nope\n", []string{"compose.yaml:7", "secrets.s.file"}},
		"unset variable":   {"services:\n  a:\n    image: x\n    secrets: [s]\nsecrets:\n  s:\n    environment: NOPE\n", []string{"compose.yaml:7", "secrets.s.environment", "NOPE"}},
		"bad mode":         {"services:\n  a:\n    image: x\n    deploy:\n      mode: sometimes\n", []string{"compose.yaml"}},
		"malformed":        {"services:\n  a: [\n", []string{"compose.yaml", "line"}},
		"undefined secret": {"services:\n  a:\n    image: x\n    secrets: [nope]\n", []string{"compose.yaml", "nope"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := load(t, map[string]string{"compose.yaml": tc.compose}, Options{Stack: "s"})
			if err == nil {
				t.Fatal("accepted")
			}
			if fault.KindOf(err) != fault.Invalid {
				t.Errorf("kind %v, want invalid", fault.KindOf(err))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	var first string
	for i := 0; i < 3; i++ {
		st, err := load(t, map[string]string{"compose.yaml": base, "db_password.txt": "x"}, Options{Env: []string{"DOTENV_VALUE=x"}})
		if err != nil {
			t.Fatal(err)
		}
		got := stack.Hash(st)
		if i == 0 {
			first = got
		} else if got != first {
			t.Fatal("same input, different stack")
		}
	}
}

// check and render judge specs without values: a missing secret variable or file is a warning there, and an
// error everywhere else.
func TestWithoutValues(t *testing.T) {
	c := "services:\n  a:\n    image: x\n    secrets: [tok, cert]\nsecrets:\n  tok:\n    environment: TOKEN\n  cert:\n    file: ./cert.pem\n"
	st, err := load(t, map[string]string{"compose.yaml": c}, Options{Stack: "s", WithoutValues: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Secrets) != 2 || len(st.Services[0].Spec.TaskTemplate.ContainerSpec.Secrets) != 2 {
		t.Fatalf("secrets %v", st.Secrets)
	}
	var warned []string
	for _, w := range st.Warnings {
		warned = append(warned, w.Field)
	}
	if strings.Join(warned, ",") != "secrets.cert.file,secrets.tok.environment" {
		t.Fatalf("warnings %v", warned)
	}
	if _, err := load(t, map[string]string{"compose.yaml": c}, Options{Stack: "s"}); err == nil {
		t.Fatal("without WithoutValues a missing secret value must fail")
	}
}

// What the differential test (cmd/agent/parity_test.go) found docker stack deploy does, in unit form.
func TestConvertNormalizesLikeDockerCLI(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "compose.yaml", `name: norm
services:
  app:
    image: example/app
    cap_add: [net_admin, NET_ADMIN, CAP_SYS_TIME, chown]
    cap_drop: [ALL, CHOWN]
    tmpfs: [/tmp]
    environment:
      B1: one
      B: two
      BARE:
    deploy:
      resources:
        limits: {cpus: "0.1"}
        reservations:
          cpus: "0.01"
          generic_resources:
            - discrete_resource_spec: {kind: gpu, value: 2}
`)
	st, err := Load(context.Background(), Options{Files: []string{f}, Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	app := service(t, st, "norm_app")
	cs := app.TaskTemplate.ContainerSpec
	if got := strings.Join(cs.CapabilityAdd, ","); got != "CAP_CHOWN,CAP_NET_ADMIN,CAP_SYS_TIME" {
		t.Errorf("cap_add %s", got)
	}
	if got := strings.Join(cs.CapabilityDrop, ","); got != "ALL" {
		t.Errorf("cap_drop %s", got)
	}
	if len(cs.Mounts) != 0 {
		t.Errorf("service-level tmpfs mounted: %+v", cs.Mounts)
	}
	var tmpfsWarned bool
	for _, w := range st.Warnings {
		tmpfsWarned = tmpfsWarned || (w.Service == "app" && w.Field == "tmpfs" && w.Value == "/tmp")
	}
	if !tmpfsWarned {
		t.Errorf("tmpfs not reported as dropped: %v", st.Warnings)
	}
	if got := strings.Join(cs.Env, " "); got != "B1=one B=two BARE" {
		t.Errorf("env %s", got)
	}
	if app.Labels[stack.LabelImage] != "example/app" || cs.Image != "example/app:latest" {
		t.Errorf("image label %q, container image %q", app.Labels[stack.LabelImage], cs.Image)
	}
	r := app.TaskTemplate.Resources
	if r.Limits.NanoCPUs != 100_000_000 || r.Reservations.NanoCPUs != 10_000_000 {
		t.Errorf("nano CPUs %d, %d", r.Limits.NanoCPUs, r.Reservations.NanoCPUs)
	}
	if g := r.Reservations.GenericResources; len(g) != 1 || g[0].DiscreteResourceSpec.Kind != "gpu" || g[0].DiscreteResourceSpec.Value != 2 {
		t.Errorf("generic resources %+v", g)
	}
	if app.EndpointSpec == nil || app.EndpointSpec.Mode != swarm.ResolutionModeVIP {
		t.Errorf("endpoint %+v", app.EndpointSpec)
	}
}
