package main

// The differential test of the conversion: every stack file of testdata/parity is deployed once with
// `docker stack deploy --resolve-image never` (with each docker CLI this machine has) and once with
// `agent apply`, on the test swarm, and what the engine stored is compared field by field: the service specs
// (inspected without the engine's defaults, so what each tool submitted), the networks, the secrets, the
// configs and the volumes. The stack name and the agent's own labels are set aside; every other difference is
// a failure unless it is one of the deliberate differences of the table `deliberate` below (README.md,
// "Parity with docker stack deploy", lists the same).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// parityCase is one stack of the corpus: a directory of testdata/parity.
type parityCase struct {
	dir string
	// files are the compose files, merged in order (default compose.yaml).
	files []string
	// profiles are enabled for the agent (`--profile`).
	profiles []string
	// env is added to the environment of both tools.
	env map[string]string
	// agentDrops are keys the agent must report as dropped (docker reports the keys it ignores; the test
	// also checks the agent reports those).
	agentDrops []string
	// serial: the stacks cannot exist side by side (a published ingress port, a fixed subnet), so they are
	// deployed, observed and removed one at a time.
	serial bool
}

var parityCorpus = []parityCase{
	{dir: "01-voting-app", serial: true},
	{dir: "02-swarm-features"},
	{dir: "03-short-syntax", serial: true},
	{dir: "04-long-syntax", serial: true},
	{dir: "05-interpolation", env: map[string]string{
		"PARITY_PLAIN": "plain-value", "PARITY_EMPTY": "", "PARITY_BUILD": "1234", "PARITY_REPLICAS": "0",
	}},
	{dir: "06-anchors-extensions"},
	{dir: "07-override-files", serial: true, files: []string{"compose.yaml", "override.yaml", "production.yaml"}},
	{dir: "08-profiles", profiles: []string{"debug"}},
	{dir: "09-dropped-keys", agentDrops: []string{"tmpfs", "privileged", "network_mode", "depends_on"}},
	{dir: "10-dropped-with-warnings"},
	{dir: "11-secrets-configs"},
	{dir: "12-networks-volumes", serial: true},
	{dir: "13-health-restart"},
	{dir: "14-resources-placement"},
	{dir: "15-modes-endpoints", serial: true},
	{dir: "16-container-settings"},
	{dir: "17-capabilities"},
	{dir: "18-image-references"},
	{dir: "19-dotenv"},
	{dir: "20-env-file"},
	{dir: "21-refused-keys", agentDrops: []string{"mem_limit", "volumes_from"}},
	{dir: "22-compose-spec-keys"},
	{dir: "23-group-add"},
	{dir: "25-config-template"},
	{dir: "26-credential-spec-config"},
	{dir: "27-top-level-name"},
	{dir: "24-unknown-to-docker", agentDrops: []string{"cpus", "runtime", "uts", "pull_policy"}},
}

// difference is a deliberate difference between the agent and docker stack deploy. This table is the one
// place the test knows them; README.md lists the same, with the same reasons.
type difference struct {
	what, reason string
	// docker limits the entry to the docker CLIs whose version starts with it; empty: every CLI.
	docker string
	// cases limits the entry to these corpus directories; empty: every case.
	cases []string
	// rejects: docker refuses the case's files with an error containing this (the agent deploys them). The
	// test fails if docker accepts them, so the entry cannot outlive the difference.
	rejects string
	// agentRejects: the agent refuses the case's files (exit 2) with an error containing this; docker
	// deploys them. The test fails if either changes.
	agentRejects string
	// input adapts what docker is given (its environment, or a file it can read) so that the rest of the
	// case is still compared.
	input func(t *testing.T, c parityCase, in *dockerInput)
	// normalize sets the difference aside in what the engine stored, for both tools' stacks.
	normalize func(o *observed)
	// ignoredKey: docker says it ignores this key but the agent does not report it as dropped (see reason).
	ignoredKey string
}

var deliberate = []difference{
	{
		what: "secret and config names carry a content hash: <stack>_<name>-<hash> (or <name>-<hash> for an explicit `name:`)",
		reason: "Swarm cannot change a secret or config in place; a new value is a new object the services roll to, " +
			"and the old one stays for a rollback. docker stack deploy fails to update a changed secret that is in use",
		normalize: stripContentHash,
	},
	{
		what:      "the agent's own labels (io.sawmill.owner, io.sawmill.spec-hash, io.sawmill.key, io.sawmill.content-hash)",
		reason:    "ownership (the agent never modifies what it did not create) and change detection; docker stack deploy has neither",
		normalize: dropAgentLabels,
	},
	{
		what:    "files without `version:` (the compose specification) with docker 20.10",
		reason:  "docker 20.10's stack deploy reads only the versioned 3.x schema; the agent reads the compose specification (compose-go), which also accepts 3.x files",
		docker:  "20.10.",
		cases:   []string{"02-swarm-features", "15-modes-endpoints"},
		rejects: "unsupported Compose file version: 1.0",
	},
	{
		what:   "profiles",
		reason: "docker stack deploy has no profiles (its schema rejects the key); the agent selects services as docker compose does. Compared with docker deploying the same file without the services of disabled profiles and without the `profiles` keys",
		cases:  []string{"08-profiles"},
		input:  withoutDisabledProfiles,
	},
	{
		what:   "the .env file",
		reason: "the agent reads .env next to the first compose file for interpolation, as docker compose does; docker stack deploy reads only its environment. Compared with docker given the .env's variables in its environment",
		cases:  []string{"19-dotenv"},
		input:  dotenvInEnvironment,
	},
	{
		what: "mem_limit and volumes_from",
		reason: "docker stack deploy refuses a file that has them (\"Compose file contains unsupported options\"); the agent " +
			"reports them as dropped keys (Swarm cannot apply them; deploy.resources.limits is Swarm's memory limit) and deploys the rest",
		cases:   []string{"21-refused-keys"},
		rejects: "Compose file contains unsupported options",
	},
	{
		what:    "dns_opt",
		reason:  "docker stack deploy's schema does not know the key and refuses the file; the agent applies it (Swarm's DNSConfig.Options), as the compose specification says",
		cases:   []string{"22-compose-spec-keys"},
		rejects: "Additional property dns_opt is not allowed",
	},
	{
		what: "override files that replace a volume (same target) with docker 20.10",
		reason: "docker 20.10 appends the later file's volumes instead of replacing the one with the same target, and the engine refuses " +
			"the duplicate mount point; newer docker CLIs and the agent (compose-go) replace it",
		docker:  "20.10.",
		cases:   []string{"07-override-files"},
		rejects: "duplicate mount point",
	},
	{
		what: "cpus, runtime, uts, pull_policy, scale (compose specification keys Swarm cannot apply)",
		reason: "docker stack deploy's schema does not know them and refuses the file; the agent reports them as dropped keys and deploys " +
			"the rest (scale, like docker compose, is the replica count when deploy.replicas is absent)",
		cases:   []string{"24-unknown-to-docker"},
		rejects: "is not allowed",
	},
	{
		what: "secret and config drivers (template_driver, driver)",
		reason: "the agent refuses them (exit 2): a templated or driver-provided value is not the file's content, so the content hash " +
			"in the name would not follow a change; docker stack deploy submits them",
		cases:        []string{"25-config-template"},
		agentRejects: "drivers are not supported by the agent",
	},
	{
		what:         "credential_spec.config",
		reason:       "the agent refuses it (exit 2): use credential_spec.file or registry; docker stack deploy submits it with a runtime config reference",
		cases:        []string{"26-credential-spec-config"},
		agentRejects: "a credential spec from a config is not supported by the agent",
	},
	{
		what: "a secret target written as /run/secrets/<source>",
		reason: "compose-go writes a missing target as /run/secrets/<source>, so the agent cannot tell it from one written out and submits " +
			"the bare name for both, as docker does for a missing target; the file in the container is the same",
		cases:     []string{"11-secrets-configs"},
		normalize: bareSecretTarget("/run/secrets/spelled_out"),
	},
	{
		what:    "the top-level `name:`",
		reason:  "docker stack deploy's schema refuses it; the agent takes it as the stack name when the command line gives none, as the compose specification says",
		cases:   []string{"27-top-level-name"},
		rejects: "Additional property name is not allowed",
	},
	{
		what:    "group_add",
		reason:  "docker stack deploy's schema does not know the key and refuses the file; the agent applies it (Swarm's ContainerSpec.Groups), as the compose specification says",
		cases:   []string{"23-group-add"},
		rejects: "Additional property group_add is not allowed",
	},
	{
		what: "`restart: \"no\"` without deploy.restart_policy",
		reason: "docker stack deploy submits no restart policy for it, so Swarm's default (condition any) restarts every task that exits; " +
			"the agent submits condition none, which is what the key says",
		cases:     []string{"09-dropped-keys", "13-health-restart"},
		normalize: restartNoAsDocker("<STACK>_db", "<STACK>_disabled"),
	},
	{
		what: "the order of extra_hosts",
		reason: "compose-go keeps extra_hosts in a map, so the agent submits them sorted by host name; docker keeps the order " +
			"of the file. The container's /etc/hosts has the same lines",
		normalize: sortHosts,
	},
	{
		what:       "`restart:` is not reported as dropped when deploy.restart_policy is absent",
		reason:     "docker stack deploy says it ignores `restart` but converts it into the restart policy when deploy.restart_policy is absent, and so does the agent; the agent reports it only when deploy.restart_policy wins",
		ignoredKey: "restart",
	},
}

// dockerInput is what a docker CLI is given for a case.
type dockerInput struct {
	files []string
	env   map[string]string
}

// observed is what the engine stored for one stack, flattened to path -> JSON value, with the stack name
// replaced by <STACK>.
type observed struct {
	stack    string
	services map[string]map[string]string
	networks map[string]map[string]string
	secrets  map[string]map[string]string
	configs  map[string]map[string]string
	volumes  map[string]map[string]string
	// warnings are the keys the tool said it ignores.
	warnings map[string]bool
}

func (o *observed) clone() *observed {
	c := &observed{stack: o.stack, warnings: o.warnings}
	cp := func(m map[string]map[string]string) map[string]map[string]string {
		out := map[string]map[string]string{}
		for k, v := range m {
			out[k] = maps.Clone(v)
		}
		return out
	}
	c.services, c.networks, c.secrets, c.configs, c.volumes = cp(o.services), cp(o.networks), cp(o.secrets), cp(o.configs), cp(o.volumes)
	return c
}

func (o *observed) kinds() map[string]map[string]map[string]string {
	return map[string]map[string]map[string]string{
		"service": o.services, "network": o.networks, "secret": o.secrets, "config": o.configs, "volume": o.volumes,
	}
}

// dockerCLI is one docker client binary.
type dockerCLI struct{ path, version string }

// dockerCLIs finds the docker CLIs of this machine: Debian's docker.io, a newer client in /usr/local/bin, and
// whatever `docker` is on PATH.
func dockerCLIs(t *testing.T) []dockerCLI {
	t.Helper()
	var out []dockerCLI
	seen := map[string]bool{}
	candidates := []string{"/usr/bin/docker", "/usr/local/bin/docker"}
	if p, err := exec.LookPath("docker"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		real, err := filepath.EvalSymlinks(p)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		b, err := exec.Command(real, "version", "--format", "{{.Client.Version}}").Output()
		if err != nil {
			// Without a reachable engine `docker version` exits 1 but still prints the client's version.
			if len(bytes.TrimSpace(b)) == 0 {
				continue
			}
		}
		out = append(out, dockerCLI{path: real, version: strings.TrimSpace(string(b))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out
}

func TestParityCorpusIsComplete(t *testing.T) {
	entries, err := os.ReadDir("testdata/parity")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, c := range parityCorpus {
		listed[c.dir] = true
	}
	for _, e := range entries {
		if e.IsDir() && !listed[e.Name()] {
			t.Errorf("testdata/parity/%s is not in parityCorpus: the differential test would never deploy it", e.Name())
		}
	}
	if len(parityCorpus) < 15 {
		t.Errorf("the corpus has %d stack files, want at least 15", len(parityCorpus))
	}
	for _, d := range deliberate {
		for _, c := range d.cases {
			if !listed[c] {
				t.Errorf("deliberate difference %q names case %s, which is not in the corpus", d.what, c)
			}
		}
	}
}

func TestParityWithDockerStackDeploy(t *testing.T) {
	dc := testenv.Docker(t)
	clis := dockerCLIs(t)
	if len(clis) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("no docker CLI: install Debian's docker.io (.ci/run does)")
		}
		t.Skip("no docker CLI on this machine")
	}
	for _, cli := range clis {
		t.Logf("docker CLI %s: %s", cli.version, cli.path)
	}
	reg := testenv.Registry(t)
	testenv.Image(t, reg+"/app:v1", "MESSAGE=v1")
	testenv.Image(t, reg+"/app:v2", "MESSAGE=v2")
	testenv.Image(t, reg+"/app:latest", "MESSAGE=latest")

	// The external objects the corpus refers to.
	ctx := context.Background()
	ext := randomName("parityext") // sorts before the stacks' names
	common := map[string]string{
		"REG":              reg,
		"EXTERNAL_SECRET":  ext + "_secret",
		"EXTERNAL_CONFIG":  ext + "_config",
		"EXTERNAL_NETWORK": ext + "_network",
		"EXTERNAL_VOLUME":  ext + "_volume",
	}
	sec, err := dc.SecretCreate(ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{Annotations: swarm.Annotations{Name: common["EXTERNAL_SECRET"]}, Data: []byte(ext)}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := dc.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{Annotations: swarm.Annotations{Name: common["EXTERNAL_CONFIG"]}, Data: []byte(ext)}})
	if err != nil {
		t.Fatal(err)
	}
	nw, err := dc.NetworkCreate(ctx, common["EXTERNAL_NETWORK"], client.NetworkCreateOptions{Driver: "overlay", Scope: "swarm", Attachable: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = dc.SecretRemove(ctx, sec.ID, client.SecretRemoveOptions{})
		_, _ = dc.ConfigRemove(ctx, cfg.ID, client.ConfigRemoveOptions{})
		_, _ = dc.NetworkRemove(ctx, nw.ID, client.NetworkRemoveOptions{})
	})
	dockerConfig := t.TempDir() // no docker config or credentials of the machine's user

	// The images the global services pulled from this test's registry (cleanups run last-registered first:
	// this one after the stacks are gone).
	t.Cleanup(func() {
		// A container of a removed service may still be stopping: retry for a while.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
			list, err := dc.ImageList(ctx, client.ImageListOptions{})
			if err != nil {
				return
			}
			left := 0
			for _, img := range list.Items {
				for _, ref := range append(img.RepoTags, img.RepoDigests...) {
					if strings.HasPrefix(ref, reg+"/") {
						if _, err := dc.ImageRemove(ctx, ref, client.ImageRemoveOptions{}); err != nil {
							left++
						}
					}
				}
			}
			if left == 0 || time.Now().After(deadline) {
				return
			}
		}
	})
	var allStacks []string
	var mu sync.Mutex
	t.Cleanup(func() {
		// Every stack either tool deployed is gone at the end.
		for _, name := range allStacks {
			if left := leftovers(dc, name); left != "" {
				t.Errorf("stack %s was not removed: %s", name, left)
			}
		}
	})

	for _, c := range parityCorpus {
		t.Run(c.dir, func(t *testing.T) {
			dir, err := filepath.Abs(filepath.Join("testdata", "parity", c.dir))
			if err != nil {
				t.Fatal(err)
			}
			files := c.files
			if len(files) == 0 {
				files = []string{"compose.yaml"}
			}
			env := map[string]string{}
			for k, v := range common {
				env[k] = v
			}
			for k, v := range c.env {
				env[k] = v
			}

			type deployment struct {
				cli   *dockerCLI
				stack string
				in    dockerInput
				out   string
				err   error
				obs   *observed
				diffs []difference
			}
			// Stack names of one length and prefix, so that they sort the same way against other names.
			agent := &deployment{stack: randomName("pqa")}
			var docker []*deployment
			for i := range clis {
				d := &deployment{cli: &clis[i], stack: randomName("pqd")}
				d.in = dockerInput{env: map[string]string{}}
				for _, f := range files {
					d.in.files = append(d.in.files, filepath.Join(dir, f))
				}
				for k, v := range env {
					d.in.env[k] = v
				}
				for _, df := range deliberate {
					if df.appliesTo(c.dir, d.cli.version) {
						d.diffs = append(d.diffs, df)
						if df.input != nil {
							df.input(t, c, &d.in)
						}
					}
				}
				docker = append(docker, d)
			}
			mu.Lock()
			allStacks = append(allStacks, agent.stack)
			for _, d := range docker {
				allStacks = append(allStacks, d.stack)
			}
			mu.Unlock()
			t.Cleanup(func() {
				var wg sync.WaitGroup
				for _, d := range append([]*deployment{agent}, docker...) {
					wg.Go(func() { removeParityStack(dc, d.stack) })
				}
				wg.Wait()
			})

			// The agent reads its environment from the process.
			for k, v := range env {
				t.Setenv(k, v)
			}
			t.Setenv("STACK_PREFIX", agent.stack)
			deployAgent := func() {
				args := []string{"apply", "--timeout", "2m"}
				for _, f := range files {
					args = append(args, "-c", filepath.Join(dir, f))
				}
				for _, p := range c.profiles {
					args = append(args, "--profile", p)
				}
				r := runAgent(t, dc, append(args, agent.stack)...)
				agent.out = r.stdout + r.stderr
				if r.code != 0 {
					agent.err = fmt.Errorf("agent apply: exit %d", r.code)
					return
				}
				// What the engine stored is what the agent wants: a second apply changes nothing.
				again := runAgent(t, dc, append(args, agent.stack)...)
				if again.code != 0 || again.writes != 0 || !noChange.MatchString(again.stdout) {
					t.Errorf("a second agent apply of %s: exit %d, %d writes (want 0, 0):\n%s", c.dir, again.code, again.writes, again.stdout)
				}
			}
			deployDocker := func(d *deployment) {
				args := []string{"stack", "deploy", "--resolve-image", "never"}
				for _, f := range d.in.files {
					args = append(args, "-c", f)
				}
				cmd := exec.Command(d.cli.path, append(args, d.stack)...)
				cmd.Dir = dir
				cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dockerConfig, "DOCKER_CONFIG=" + dockerConfig,
					"DOCKER_HOST=" + os.Getenv(testenv.DockerHostEnv), "STACK_PREFIX=" + d.stack}
				for k, v := range d.in.env {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
				b, err := cmd.CombinedOutput()
				d.out = string(b)
				t.Logf("docker %s stack deploy %s -> %v\n%s", d.cli.version, d.stack, err, b)
				if err != nil {
					d.err = fmt.Errorf("docker %s stack deploy: %w", d.cli.version, err)
					return
				}
				// The agent waits for its tasks; docker does not. The volumes a task creates are compared too.
				if err := waitRunning(ctx, dc, d.stack, 90*time.Second); err != nil {
					t.Errorf("docker %s stack %s: %v", d.cli.version, d.stack, err)
				}
			}
			observe := func(d *deployment, isAgent bool) {
				if d.err != nil {
					return
				}
				o, err := observeStack(ctx, dc, d.stack)
				if err != nil {
					t.Errorf("observe %s: %v", d.stack, err)
					return
				}
				o.warnings = droppedKeys(d.out, isAgent)
				d.obs = o
			}

			if c.serial {
				deployAgent()
				observe(agent, true)
				removeParityStack(dc, agent.stack)
				for _, d := range docker {
					deployDocker(d)
					observe(d, false)
					removeParityStack(dc, d.stack)
				}
			} else {
				var wg sync.WaitGroup
				wg.Go(func() { deployAgent(); observe(agent, true) })
				for _, d := range docker {
					wg.Go(func() { deployDocker(d); observe(d, false) })
				}
				wg.Wait()
			}
			if df, ok := agentRejected(c.dir); ok {
				if agent.err == nil || !strings.Contains(agent.out, df.agentRejects) || !strings.Contains(agent.err.Error(), "exit 2") {
					t.Fatalf("deliberate difference %q says the agent refuses %s with %q (exit 2); it gave %v:\n%s", df.what, c.dir, df.agentRejects, agent.err, agent.out)
				}
				for _, d := range docker {
					if d.err != nil {
						t.Errorf("deliberate difference %q says docker deploys %s, docker %s did not:\n%s", df.what, c.dir, d.cli.version, d.out)
					}
				}
				return
			}
			if agent.err != nil {
				t.Fatalf("%v:\n%s", agent.err, agent.out)
			}
			for _, key := range c.agentDrops {
				if agent.obs != nil && !agent.obs.warnings[key] {
					t.Errorf("the agent does not report %s as dropped", key)
				}
			}

			for _, d := range docker {
				t.Run("docker-"+d.cli.version, func(t *testing.T) {
					var rejects []difference
					for _, df := range d.diffs {
						if df.rejects != "" {
							rejects = append(rejects, df)
						}
					}
					if len(rejects) > 0 {
						if d.err == nil {
							t.Fatalf("deliberate difference %q says docker %s rejects %s, but it deployed it: remove the entry", rejects[0].what, d.cli.version, c.dir)
						}
						for _, df := range rejects {
							if !strings.Contains(d.out, df.rejects) {
								t.Fatalf("docker %s rejected %s, but not with %q (deliberate difference %q):\n%s", d.cli.version, c.dir, df.rejects, df.what, d.out)
							}
						}
						t.Logf("docker %s rejects %s as expected: %s", d.cli.version, c.dir, rejects[0].what)
						return
					}
					if d.err != nil {
						t.Fatalf("%v:\n%s", d.err, d.out)
					}
					if agent.obs == nil || d.obs == nil {
						t.Fatal("a stack could not be observed")
					}
					got, want := agent.obs.clone(), d.obs.clone()
					for _, df := range d.diffs {
						if df.normalize != nil {
							df.normalize(got)
							df.normalize(want)
						}
					}
					for _, diff := range compareObserved(want, got) {
						t.Error(diff)
					}
					// Every key docker says it ignores, the agent reports as dropped.
					for key := range d.obs.warnings {
						if got.warnings[key] || slices.ContainsFunc(d.diffs, func(df difference) bool { return df.ignoredKey == key }) {
							continue
						}
						t.Errorf("docker %s ignores %q, the agent does not report it as dropped", d.cli.version, key)
					}
				})
			}
		})
	}
}

func agentRejected(dir string) (difference, bool) {
	for _, d := range deliberate {
		if d.agentRejects != "" && d.appliesTo(dir, "") {
			return d, true
		}
	}
	return difference{}, false
}

func (d difference) appliesTo(dir, version string) bool {
	if d.docker != "" && !strings.HasPrefix(version, d.docker) {
		return false
	}
	return len(d.cases) == 0 || slices.Contains(d.cases, dir)
}

// observeStack reads what the engine stored for a stack.
func observeStack(ctx context.Context, dc *client.Client, name string) (*observed, error) {
	o := &observed{stack: name, services: map[string]map[string]string{}, networks: map[string]map[string]string{},
		secrets: map[string]map[string]string{}, configs: map[string]map[string]string{}, volumes: map[string]map[string]string{}}
	byLabel := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)

	// Secret and config names as docker would write them, by ID (for the references of the services).
	secretNames, configNames := map[string]string{}, map[string]string{}
	secrets, err := dc.SecretList(ctx, client.SecretListOptions{Filters: byLabel})
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	for _, s := range secrets.Items {
		secretNames[s.ID] = s.Spec.Name
		o.secrets[s.Spec.Name] = flattenJSON(name, s.Spec)
	}
	configs, err := dc.ConfigList(ctx, client.ConfigListOptions{Filters: byLabel})
	if err != nil {
		return nil, fmt.Errorf("list configs: %w", err)
	}
	for _, c := range configs.Items {
		configNames[c.ID] = c.Spec.Name
		o.configs[c.Spec.Name] = flattenJSON(name, c.Spec)
	}

	info, err := dc.Info(ctx, client.InfoOptions{})
	if err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	var pools []netip.Prefix
	if info.Info.Swarm.Cluster != nil {
		pools = info.Info.Swarm.Cluster.DefaultAddrPool
	}
	if len(pools) == 0 {
		pools = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} // Swarm's default
	}
	nets, err := dc.NetworkList(ctx, client.NetworkListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	networkNames := map[string]string{}
	for _, n := range nets.Items {
		networkNames[n.ID] = n.Name
		if n.Labels[stack.LabelNamespace] != name {
			continue
		}
		r, err := dc.NetworkInspect(ctx, n.ID, client.NetworkInspectOptions{})
		if err != nil {
			return nil, fmt.Errorf("inspect network %s: %w", n.Name, err)
		}
		var raw map[string]any
		if err := json.Unmarshal(r.Raw, &raw); err != nil {
			return nil, err
		}
		keep := map[string]any{}
		for _, k := range []string{"Name", "Driver", "Scope", "EnableIPv6", "IPAM", "Internal", "Attachable", "Ingress", "ConfigOnly", "ConfigFrom", "Options", "Labels"} {
			keep[k] = raw[k]
		}
		flat := flattenJSON(name, keep)
		// What the swarm allocator chose differs from network to network whoever asked: a subnet from its
		// default pool (where the compose file gives none) and the VXLAN ID.
		for k, v := range flat {
			var s string
			_ = json.Unmarshal([]byte(v), &s)
			if p, err := netip.ParsePrefix(s); err == nil && strings.HasSuffix(k, ".Subnet") && slices.ContainsFunc(pools, func(pool netip.Prefix) bool { return pool.Overlaps(p) && pool.Bits() <= p.Bits() }) {
				delete(flat, k)
				delete(flat, strings.TrimSuffix(k, ".Subnet")+".Gateway")
			}
		}
		delete(flat, "Options.com.docker.network.driver.overlay.vxlanid_list")
		o.networks[n.Name] = flat
	}

	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: byLabel})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	for _, s := range svcs.Items {
		// Without the engine's defaults: the spec as the tool submitted it.
		r, err := dc.ServiceInspect(ctx, s.ID, client.ServiceInspectOptions{})
		if err != nil {
			return nil, fmt.Errorf("inspect service %s: %w", s.Spec.Name, err)
		}
		var raw struct{ Spec map[string]any }
		if err := json.Unmarshal(r.Raw, &raw); err != nil {
			return nil, err
		}
		flat := flattenJSON(name, raw.Spec)
		for k, v := range flat {
			var id string
			_ = json.Unmarshal([]byte(v), &id)
			switch {
			case networkTarget.MatchString(k):
				flat[k] = jsonString(scrub(name, networkNames[id]))
			case strings.HasSuffix(k, ".SecretID"), strings.HasSuffix(k, ".ConfigID"):
				delete(flat, k) // IDs differ by nature; the names are compared
			}
		}
		o.services[scrub(name, s.Spec.Name)] = flat
	}

	vols, err := dc.VolumeList(ctx, client.VolumeListOptions{Filters: byLabel})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	for _, v := range vols.Items {
		o.volumes[scrub(name, v.Name)] = flattenJSON(name, map[string]any{"Driver": v.Driver, "Labels": v.Labels, "Options": v.Options, "Scope": v.Scope})
	}
	rekey := func(m map[string]map[string]string) {
		for k, v := range m {
			delete(m, k)
			m[scrub(name, k)] = v
		}
	}
	rekey(o.secrets)
	rekey(o.configs)
	rekey(o.networks)
	return o, nil
}

// scrub replaces the stack name.
func scrub(stackName, s string) string { return strings.ReplaceAll(s, stackName, "<STACK>") }

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// flattenJSON turns v into path -> JSON leaf, with the stack name replaced. Null, empty objects and empty
// lists are left out: to Swarm they are the same as an absent field.
func flattenJSON(stackName string, v any) map[string]string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var generic any
	if err := json.Unmarshal([]byte(scrub(stackName, string(b))), &generic); err != nil {
		panic(err)
	}
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		join := func(k string) string {
			if path == "" {
				return k
			}
			return path + "." + k
		}
		switch x := v.(type) {
		case nil:
		case map[string]any:
			for k, e := range x {
				walk(join(k), e)
			}
		case []any:
			for i, e := range x {
				walk(join(strconv.Itoa(i)), e)
			}
		default:
			b, _ := json.Marshal(x)
			out[path] = string(b)
		}
	}
	walk("", generic)
	return out
}

// compareObserved lists the differences between docker's stack and the agent's.
func compareObserved(docker, agent *observed) []string {
	var out []string
	dk, ak := docker.kinds(), agent.kinds()
	for _, kind := range []string{"service", "network", "secret", "config", "volume"} {
		d, a := dk[kind], ak[kind]
		for _, name := range sortedKeysOf(d) {
			if _, ok := a[name]; !ok {
				out = append(out, fmt.Sprintf("%s %s: docker created it, the agent did not", kind, name))
			}
		}
		for _, name := range sortedKeysOf(a) {
			if _, ok := d[name]; !ok {
				out = append(out, fmt.Sprintf("%s %s: the agent created it, docker did not", kind, name))
				continue
			}
			df, af := d[name], a[name]
			paths := map[string]bool{}
			for p := range df {
				paths[p] = true
			}
			for p := range af {
				paths[p] = true
			}
			for _, p := range sortedKeysOf(paths) {
				dv, dok := df[p]
				av, aok := af[p]
				switch {
				case !aok:
					out = append(out, fmt.Sprintf("%s %s: %s: docker %s, the agent leaves it out", kind, name, p, dv))
				case !dok:
					out = append(out, fmt.Sprintf("%s %s: %s: the agent %s, docker leaves it out", kind, name, p, av))
				case dv != av:
					out = append(out, fmt.Sprintf("%s %s: %s: docker %s, the agent %s", kind, name, p, dv, av))
				}
			}
		}
	}
	return out
}

func sortedKeysOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// agentOwnLabels are the labels only the agent writes.
var agentOwnLabels = []string{stack.LabelOwner, stack.LabelSpecHash, stack.LabelKey, stack.LabelContentHash}

func dropAgentLabels(o *observed) {
	for _, objs := range o.kinds() {
		for name, flat := range objs {
			c := map[string]string{}
			for p, v := range flat {
				if !slices.ContainsFunc(agentOwnLabels, func(l string) bool { return strings.HasSuffix(p, "Labels."+l) }) {
					c[p] = v
				}
			}
			objs[name] = c
		}
	}
}

// stripContentHash renames the agent's secrets and configs to the names docker gives them, in the objects
// and in the services' references.
func stripContentHash(o *observed) {
	renames := map[string]string{}
	for _, objs := range []map[string]map[string]string{o.secrets, o.configs} {
		for name, flat := range objs {
			var hash string
			for p, v := range flat {
				if strings.HasSuffix(p, "Labels."+stack.LabelContentHash) {
					_ = json.Unmarshal([]byte(v), &hash)
				}
			}
			if hash == "" || !strings.HasSuffix(name, "-"+hash) {
				continue
			}
			plain := strings.TrimSuffix(name, "-"+hash)
			renames[name] = plain
			c := map[string]string{}
			for p, v := range flat {
				if p == "Name" {
					v = jsonString(plain)
				}
				c[p] = v
			}
			delete(objs, name)
			objs[plain] = c
		}
	}
	for _, flat := range o.services {
		for p, v := range flat {
			if strings.HasSuffix(p, ".SecretName") || strings.HasSuffix(p, ".ConfigName") {
				var n string
				_ = json.Unmarshal([]byte(v), &n)
				if plain, ok := renames[n]; ok {
					flat[p] = jsonString(plain)
				}
			}
		}
	}
}

// sortHosts sorts every service's ContainerSpec.Hosts.
func sortHosts(o *observed) {
	for _, flat := range o.services {
		var hosts []string
		for i := 0; ; i++ {
			v, ok := flat["TaskTemplate.ContainerSpec.Hosts."+strconv.Itoa(i)]
			if !ok {
				break
			}
			var h string
			_ = json.Unmarshal([]byte(v), &h)
			hosts = append(hosts, h)
		}
		// "IP host": by host name, then address.
		sort.Slice(hosts, func(i, j int) bool {
			ai, ni, _ := strings.Cut(hosts[i], " ")
			aj, nj, _ := strings.Cut(hosts[j], " ")
			return ni < nj || ni == nj && ai < aj
		})
		for i, h := range hosts {
			flat["TaskTemplate.ContainerSpec.Hosts."+strconv.Itoa(i)] = jsonString(h)
		}
	}
}

// bareSecretTarget writes a secret reference's target written out as /run/secrets/<name> as the bare name.
func bareSecretTarget(target string) func(o *observed) {
	return func(o *observed) {
		for _, flat := range o.services {
			for k, v := range flat {
				if strings.HasPrefix(k, "TaskTemplate.ContainerSpec.Secrets.") && strings.HasSuffix(k, ".File.Name") && v == jsonString(target) {
					flat[k] = jsonString(strings.TrimPrefix(target, "/run/secrets/"))
				}
			}
		}
	}
}

// restartNoAsDocker removes the restart policy `restart: "no"` gave the agent's services (condition none
// and nothing else), as docker leaves it out.
func restartNoAsDocker(services ...string) func(o *observed) {
	return func(o *observed) {
		for _, name := range services {
			flat := o.services[name]
			if flat == nil || flat["TaskTemplate.RestartPolicy.Condition"] != `"none"` {
				continue
			}
			for k := range flat {
				if strings.HasPrefix(k, "TaskTemplate.RestartPolicy.") {
					delete(flat, k)
				}
			}
		}
	}
}

// withoutDisabledProfiles gives docker the case's files without the services of profiles the agent did not
// enable and without the `profiles` keys.
func withoutDisabledProfiles(t *testing.T, c parityCase, in *dockerInput) {
	t.Helper()
	for i, f := range in.files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		services := mappingValue(doc.Content[0], "services")
		if services == nil {
			continue
		}
		var kept []*yaml.Node
		for j := 0; j+1 < len(services.Content); j += 2 {
			svc := services.Content[j+1]
			enabled := true
			var fields []*yaml.Node
			for k := 0; k+1 < len(svc.Content); k += 2 {
				if svc.Content[k].Value == "profiles" {
					enabled = false
					for _, p := range svc.Content[k+1].Content {
						enabled = enabled || slices.Contains(c.profiles, p.Value)
					}
					continue
				}
				fields = append(fields, svc.Content[k], svc.Content[k+1])
			}
			svc.Content = fields
			if enabled {
				kept = append(kept, services.Content[j], svc)
			}
		}
		services.Content = kept
		out, err := yaml.Marshal(&doc)
		if err != nil {
			t.Fatal(err)
		}
		// The derived file is written to a temporary directory: a case that uses this has no relative path.
		p := filepath.Join(t.TempDir(), filepath.Base(f))
		if err := os.WriteFile(p, out, 0o644); err != nil {
			t.Fatal(err)
		}
		in.files[i] = p
	}
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// dotenvInEnvironment gives docker the variables of the case's .env file in its environment.
func dotenvInEnvironment(t *testing.T, c parityCase, in *dockerInput) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(in.files[0]), ".env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		}
		in.env[k] = v
	}
}

var (
	noChange            = regexp.MustCompile(`(?m)^0 created, 0 configured, \d+ unchanged, 0 deleted$`)
	networkTarget       = regexp.MustCompile(`^TaskTemplate\.Networks\.\d+\.Target$`)
	agentDropped        = regexp.MustCompile(`(?m)^warning: \S+: (\S+) is ignored by Swarm`)
	dockerUnsupported   = regexp.MustCompile(`(?m)^Ignoring unsupported options: (.*)$`)
	dockerDeprecatedKey = regexp.MustCompile(`(?m)^(\w+): `)
)

// droppedKeys are the compose keys a tool's output says it ignores.
func droppedKeys(out string, isAgent bool) map[string]bool {
	keys := map[string]bool{}
	if isAgent {
		for _, m := range agentDropped.FindAllStringSubmatch(out, -1) {
			keys[m[1]] = true
		}
		return keys
	}
	for _, m := range dockerUnsupported.FindAllStringSubmatch(out, -1) {
		for _, k := range strings.Split(m[1], ",") {
			keys[strings.TrimSpace(k)] = true
		}
	}
	// "Ignoring deprecated options:", then "key: why" lines separated by blank lines.
	if _, deprecated, ok := strings.Cut(out, "Ignoring deprecated options:"); ok {
		for _, line := range strings.Split(deprecated, "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			m := dockerDeprecatedKey.FindStringSubmatch(line)
			if m == nil {
				break
			}
			keys[m[1]] = true
		}
	}
	return keys
}

// waitRunning waits until every replicated service of the stack runs its replicas and every global one runs
// a task (jobs are not waited for).
func waitRunning(ctx context.Context, dc *client.Client, name string, timeout time.Duration) error {
	byLabel := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)
	deadline := time.Now().Add(timeout)
	for {
		svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: byLabel})
		if err != nil {
			return fmt.Errorf("list services: %w", err)
		}
		var pending []string
		for _, s := range svcs.Items {
			want := 0
			switch m := s.Spec.Mode; {
			case m.Replicated != nil && m.Replicated.Replicas != nil:
				want = int(*m.Replicated.Replicas)
			case m.Global != nil:
				want = 1
			}
			if want == 0 {
				continue
			}
			tasks, err := dc.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", s.ID).Add("desired-state", "running")})
			if err != nil {
				return fmt.Errorf("list tasks: %w", err)
			}
			running := 0
			for _, task := range tasks.Items {
				if task.Status.State == swarm.TaskStateRunning {
					running++
				}
			}
			if running < want {
				pending = append(pending, s.Spec.Name)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("services %s did not run within %s", strings.Join(pending, ", "), timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// removeParityStack removes a stack's services, secrets, configs and networks, then its volumes (once the
// containers that used them are gone).
func removeParityStack(dc *client.Client, name string) {
	removeStack(dc, name)
	ctx := context.Background()
	byLabel := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		vols, err := dc.VolumeList(ctx, client.VolumeListOptions{Filters: byLabel})
		if err != nil || len(vols.Items) == 0 {
			return
		}
		for _, v := range vols.Items {
			_, _ = dc.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{})
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// leftovers names what is left of a stack.
func leftovers(dc *client.Client, name string) string {
	ctx := context.Background()
	byLabel := make(client.Filters).Add("label", stack.LabelNamespace+"="+name)
	var left []string
	if r, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: byLabel}); err == nil && len(r.Items) > 0 {
		left = append(left, fmt.Sprintf("%d services", len(r.Items)))
	}
	if r, err := dc.NetworkList(ctx, client.NetworkListOptions{Filters: byLabel}); err == nil && len(r.Items) > 0 {
		left = append(left, fmt.Sprintf("%d networks", len(r.Items)))
	}
	if r, err := dc.SecretList(ctx, client.SecretListOptions{Filters: byLabel}); err == nil && len(r.Items) > 0 {
		left = append(left, fmt.Sprintf("%d secrets", len(r.Items)))
	}
	if r, err := dc.ConfigList(ctx, client.ConfigListOptions{Filters: byLabel}); err == nil && len(r.Items) > 0 {
		left = append(left, fmt.Sprintf("%d configs", len(r.Items)))
	}
	if r, err := dc.VolumeList(ctx, client.VolumeListOptions{Filters: byLabel}); err == nil && len(r.Items) > 0 {
		left = append(left, fmt.Sprintf("%d volumes", len(r.Items)))
	}
	return strings.Join(left, ", ")
}
