package pipeline

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/discover"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// moduleRoot walks up from the package directory to the directory holding go.mod.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the package directory")
		}
		dir = parent
	}
}

// ciSchema compiles ../shared/gitlab/ci.schema.json (next to the module root). Missing is a
// failure, not a skip.
func ciSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	path := filepath.Join(moduleRoot(t), "..", "shared", "gitlab", "ci.schema.json")
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("GitLab CI schema: %v", err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("https://gitlab.com/.gitlab-ci.yml", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("https://gitlab.com/.gitlab-ci.yml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jsonValue converts YAML to the values encoding/json would produce.
func jsonValue(t testing.TB, yml []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(yml, &v); err != nil {
		t.Fatalf("parse YAML: %v", err)
	}
	return toJSON(t, v)
}

func toJSON(t testing.TB, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = toJSON(t, e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = toJSON(t, e)
		}
		return x
	case int:
		return float64(x)
	case map[any]any:
		t.Fatalf("non-string mapping key in %v", x)
	}
	return v
}

func validate(t testing.TB, s *jsonschema.Schema, yml []byte) error {
	t.Helper()
	return s.Validate(jsonValue(t, yml))
}

type goldenCase struct {
	Repo    string         `yaml:"repo"`
	All     bool           `yaml:"all"`
	Changed []string       `yaml:"changed"`
	Config  map[string]any `yaml:"config"`
	// Reuse: the channel record generate read (absent: --base, no record).
	Reuse *struct {
		Commit  string            `yaml:"commit"`
		Channel string            `yaml:"channel"`
		Expect  string            `yaml:"expect"`
		Digests map[string]string `yaml:"digests"`
	} `yaml:"reuse"`
	MergeRequest bool `yaml:"merge_request"`
}

func loadCase(t *testing.T, file string) (goldenCase, Config) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var gc goldenCase
	if err := yaml.Unmarshal(raw, &gc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	b, _ := yaml.Marshal(gc.Config)
	cfg := Defaults()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("%s: config: %v", file, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return gc, cfg
}

func generate(t *testing.T, gc goldenCase, cfg Config) []byte {
	t.Helper()
	repo, err := discover.Scan(filepath.Join("testdata", "repos", gc.Repo), discover.Options{Registries: []string{cfg.Registry}})
	if err != nil {
		t.Fatal(err)
	}
	d := discover.Diff{All: gc.All, Why: "rebuild all: no base revision", Paths: gc.Changed}
	opt := Options{MergeRequest: gc.MergeRequest}
	if r := gc.Reuse; r != nil {
		opt.Reuse = Reuse{Known: true, Commit: r.Commit, Channel: r.Channel, Expect: r.Expect, Digests: r.Digests}
	}
	p, err := BuildWith(repo, discover.Plan(repo, d), cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	return p.Bytes()
}

func TestGolden(t *testing.T) {
	schema := ciSchema(t)
	cases, err := filepath.Glob(filepath.Join("testdata", "golden", "*.yaml"))
	if err != nil || len(cases) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for _, file := range cases {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			gc, cfg := loadCase(t, file)
			got := generate(t, gc, cfg)
			if again := generate(t, gc, cfg); !bytes.Equal(got, again) {
				t.Fatal("two runs on the same input gave different bytes")
			}
			if err := validate(t, schema, got); err != nil {
				t.Fatalf("generated pipeline does not validate against GitLab's CI schema: %v\n%s", err, got)
			}
			// The renderer's YAML must mean what the model says: parse it back.
			var back map[string]any
			if err := yaml.Unmarshal(got, &back); err != nil {
				t.Fatalf("generated YAML does not parse: %v", err)
			}
			wantFile := filepath.Join("testdata", "golden", name+".want.yml")
			if *update {
				if err := os.WriteFile(wantFile, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(wantFile)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the generated pipeline (go test -update rewrites it):\n%s", wantFile, got)
			}
			if err := validate(t, schema, want); err != nil {
				t.Errorf("%s does not validate against GitLab's CI schema: %v", wantFile, err)
			}
		})
	}
}

// The schema check must be able to fail: a pipeline with a wrong value is rejected.
func TestSchemaRejectsInvalid(t *testing.T) {
	schema := ciSchema(t)
	for name, yml := range map[string]string{
		"bad when":           "job:\n  script: [x]\n  when: sometimes\n",
		"misspelled keyword": "job:\n  script: [x]\n  artifact: {paths: [a]}\n",
		"tier not a string":  "job:\n  script: [x]\n  environment: {name: prod, deployment_tier: [a]}\n",
		"needs not a list":   "job:\n  script: [x]\n  needs: build\n  extends: 3\n",
		"id_tokens bad aud":  "job:\n  script: [x]\n  id_tokens: {T: {aud: {x: 1}}}\n",
	} {
		if err := validate(t, schema, []byte(yml)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGoldenDAG(t *testing.T) {
	gc, cfg := loadCase(t, filepath.Join("testdata", "golden", "partial.yaml"))
	var doc map[string]any
	if err := yaml.Unmarshal(generate(t, gc, cfg), &doc); err != nil {
		t.Fatal(err)
	}
	needs := func(job string) []string {
		j, ok := doc[job].(map[string]any)
		if !ok {
			t.Fatalf("no job %s", job)
		}
		var out []string
		ns, _ := j["needs"].([]any)
		for _, n := range ns {
			out = append(out, n.(map[string]any)["job"].(string))
		}
		return out
	}
	if got := strings.Join(needs("build:app"), ","); got != "build:mid" {
		t.Errorf("build:app needs %s", got)
	}
	if got := strings.Join(needs("build:mid"), ","); got != "" {
		t.Errorf("build:mid needs %q (base is reused)", got)
	}
	if got := strings.Join(needs("sign:mid"), ","); got != "build:mid" {
		t.Errorf("sign:mid needs %s", got)
	}
	if got := strings.Join(needs("release"), ","); got != "sign:mid,sign:app,policy:etl,policy:platform" {
		t.Errorf("release needs %s", got)
	}
	for _, j := range []string{"build:base", "build:tool", "scan:mid", "sign:base"} {
		if _, ok := doc[j]; ok {
			t.Errorf("unexpected job %s", j)
		}
	}
	if _, ok := doc["sign:mid"].(map[string]any)["id_tokens"]; ok {
		t.Error("key signing must not request an id token")
	}
	rel := doc["release"].(map[string]any)["variables"].(map[string]any)
	if rel["SAWMILL_REBUILT"] != "mid app" || rel["SAWMILL_REUSED"] != "base tool" {
		t.Errorf("release variables %v", rel)
	}
	args := doc["build:app"].(map[string]any)["variables"].(map[string]any)["SAWMILL_BUILD_ARGS"]
	if args != "REGISTRY=registry.example.com:5000/team/sawmill\nMID_IMAGE=registry.example.com:5000/team/sawmill/mid@${MID_DIGEST}" {
		t.Errorf("build:app args %q", args)
	}
	args = doc["build:mid"].(map[string]any)["variables"].(map[string]any)["SAWMILL_BUILD_ARGS"]
	if args != "REGISTRY=registry.example.com:5000/team/sawmill\nBASE_IMAGE=registry.example.com:5000/team/sawmill/base:release-${CI_COMMIT_REF_SLUG}" {
		t.Errorf("build:mid args %q", args)
	}
	prod := doc["deploy:production"].(map[string]any)
	if prod["rules"].([]any)[0].(map[string]any)["when"] != "manual" || prod["resource_group"] != "deploy-production" {
		t.Errorf("deploy:production %v", prod)
	}
	// Production is promoted only after staging (same branch) deployed; dev deploys another branch.
	if got := strings.Join(needs("deploy:production"), ","); got != "release,deploy:staging" {
		t.Errorf("deploy:production needs %s", got)
	}
	if got := strings.Join(needs("deploy:staging"), ","); got != "release" {
		t.Errorf("deploy:staging needs %s", got)
	}
	if rel := doc["release"].(map[string]any); rel["resource_group"] != "sawmill-release-$CI_COMMIT_REF_SLUG" || rel["interruptible"] != false {
		t.Errorf("release is not serialised per ref: %v", rel)
	}
	dev := doc["deploy:dev"].(map[string]any)
	if dev["rules"].([]any)[0].(map[string]any)["if"] != `$CI_COMMIT_BRANCH == "develop"` {
		t.Errorf("deploy:dev %v", dev)
	}
}

func TestUnknownEnvironment(t *testing.T) {
	cfg := Defaults()
	cfg.Registry = "registry.gitlab.com/g/p"
	cfg.Environments = []Environment{{Name: "staging", Tier: "staging"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	repo, err := discover.Scan(filepath.Join("testdata", "repos", "mono"), discover.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(repo, discover.Plan(repo, discover.Diff{All: true}), cfg)
	if err == nil || !strings.Contains(err.Error(), `stacks/platform/compose.production.yaml: unknown environment "production"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Registry = "" }, "registry: required"},
		{func(c *Config) { c.Registry = "Registry.gitlab.com/x/" }, "registry: \"Registry.gitlab.com/x/\" is not a registry path"},
		{func(c *Config) { c.Environments[1].Tier = "prod" }, `environments[1].tier: "prod" is not one of production, staging, testing, development, other`},
		{func(c *Config) { c.Environments[0].When = "always" }, `environments[0].when: "always" is not one of automatic, manual`},
		{func(c *Config) { c.Environments[1].Name = "staging" }, `environments[1].name: environment "staging" is defined twice`},
		{func(c *Config) { c.Signing.Mode = "gpg" }, `signing.mode: "gpg" is not one of keyless, key`},
		{func(c *Config) { c.Signing.Format = "v2" }, `signing.format: "v2" is not one of bundle, legacy`},
		{func(c *Config) { c.Signing.Mode = "key"; c.Signing.KeyVariable = "a-b" }, `signing.key_variable: "a-b" is not a CI/CD variable name`},
		{func(c *Config) { c.Builder = "kaniko" }, `builder: "kaniko" is not one of buildah, buildkit`},
		{func(c *Config) { c.Scanners = []string{"sbom", "dast"} }, `scanners[1]: "dast" is not one of container_scanning, sbom`},
		{func(c *Config) { c.Scanners = []string{"sast"} }, `scanners[0]: sast runs in the parent pipeline now, from GitLab's SAST template`},
		{func(c *Config) { c.Component = "sawmill-jobs" }, `component: "sawmill-jobs" is not <host>/<project path>/<component>@<version>`},
		{func(c *Config) { c.SeverityThreshold = "severe" }, `severity_threshold: "severe" is not one of none, low, medium, high, critical`},
		{func(c *Config) { c.MaxNeeds = 0 }, "max_needs: 0 must be at least 1"},
		{func(c *Config) { c.Templates = "../x" }, `templates: "../x" must be a directory inside the repository`},
	} {
		c := Defaults()
		c.Registry = "registry.gitlab.com/g/p"
		c.Environments = []Environment{{Name: "staging", Tier: "staging", When: "automatic"}, {Name: "production", Tier: "production"}}
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
	c := Defaults()
	c.Registry = "localhost:5000/p"
	c.Environments = []Environment{{Name: "production", Tier: "production"}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if e := c.Environments[0]; e.When != "manual" || e.Branch != "main" {
		t.Errorf("defaults not filled: %+v", e)
	}
}

func TestRenderQuoting(t *testing.T) {
	p := &Pipeline{Stages: []string{"a"}, Variables: []Var{
		{"A", "true"}, {"B", "1.26"}, {"C", "a: b"}, {"D", "x #y"}, {"E", "line1\nline2"},
		{"F", ""}, {"G", "null"}, {"H", "*alias"}, {"I", "-dash"}, {"J", `say "hi"`}, {"K", "plain/path:tag"},
	}}
	var back struct {
		Variables map[string]string `yaml:"variables"`
	}
	if err := yaml.Unmarshal(p.Bytes(), &back); err != nil {
		t.Fatalf("%v\n%s", err, p.Bytes())
	}
	for _, v := range p.Variables {
		if back.Variables[v.Name] != v.Value {
			t.Errorf("%s: round trip %q -> %q", v.Name, v.Value, back.Variables[v.Name])
		}
	}
}

func TestInitFiles(t *testing.T) {
	files, err := InitFiles("pipelines", InitOptions{Registry: "registry.gitlab.com/g/p", DefaultBranch: "main", Image: "golang:1.26", Command: "pipegen", Agent: "agent", Signing: "keyless", SecurityTemplates: true})
	if err != nil {
		t.Fatal(err)
	}
	schema := ciSchema(t)
	var paths []string
	for _, f := range files {
		paths = append(paths, f.Path)
		switch {
		case f.Path == "pipegen.yaml":
			cfg := Defaults()
			dec := yaml.NewDecoder(bytes.NewReader(f.Data))
			dec.KnownFields(true)
			if err := dec.Decode(&cfg); err != nil {
				t.Fatalf("pipegen.yaml: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("pipegen.yaml: %v", err)
			}
		case f.Path == ".gitlab-ci.yml":
			if err := validate(t, schema, f.Data); err != nil {
				t.Errorf("%s: %v", f.Path, err)
			}
			for _, tpl := range []string{"Security/SAST.gitlab-ci.yml", "Security/Secret-Detection.gitlab-ci.yml", "Security/Dependency-Scanning.gitlab-ci.yml"} {
				if !bytes.Contains(f.Data, []byte("  - template: "+tpl+"\n")) {
					t.Errorf(".gitlab-ci.yml does not include %s", tpl)
				}
			}
		default:
			// Templates alone are valid CI files too (hidden jobs only).
			if err := validate(t, schema, f.Data); err != nil {
				t.Errorf("%s: %v", f.Path, err)
			}
		}
	}
	want := "pipelines/build.yml pipelines/scan.yml pipelines/sign.yml pipelines/test.yml pipelines/release.yml pipelines/deploy.yml pipegen.yaml .gitlab-ci.yml"
	if got := strings.Join(paths, " "); got != want {
		t.Errorf("files = %s", got)
	}
}

// This repository's own pipelines/*.yml are the embedded defaults.
func TestRepositoryTemplatesAreDefaults(t *testing.T) {
	root := moduleRoot(t)
	for _, name := range TemplateFiles {
		want, err := Template(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, "pipelines", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("pipelines/%s differs from internal/pipeline/defaults/pipelines/%s", name, name)
		}
	}
}

// The hand-written plain-scalar checks agree with their regular expressions.
func TestPlainScalars(t *testing.T) {
	keyRE := regexp.MustCompile(`^\.?[A-Za-z_][A-Za-z0-9_.-]*$`)
	valRE := regexp.MustCompile(`^(\.?[A-Za-z/$])[A-Za-z0-9_./@${}=+\-]*( [A-Za-z0-9_./@${}=+\-]+)*$`)
	for _, s := range []string{"", ".", ".a", "..a", "a", "_a", "build:x", "a b", "a  b", "a ", " a", "1a", "$X", "${X}", "/p/q", "a#b", "a:b", "a-b.c", "-a",
		".sawmill-build", "true", "No", "null", "quay.io/buildah/stable:v1.42", "x=1 y=2", "a\nb", "é", "a\tb", "{a}", "@a", "TRUE", "Off", "nULL", "Y", "\u212a", "yeſ", "FALSE!"} {
		if got, want := plainKey(s), keyRE.MatchString(s) && !reserved[strings.ToLower(s)]; got != want {
			t.Errorf("plainKey(%q) = %v, want %v", s, got, want)
		}
		if got, want := plainValue(s), valRE.MatchString(s) && !reserved[strings.ToLower(s)]; got != want {
			t.Errorf("plainValue(%q) = %v, want %v", s, got, want)
		}
	}
}

// scaleRepo writes a repository with n images (no dependencies) and m stacks.
func scaleRepo(t *testing.T, n, m int) *discover.Repo {
	t.Helper()
	dir := t.TempDir()
	for i := range n {
		p := filepath.Join(dir, "images", fmt.Sprintf("img%02d", i))
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	}
	for i := range m {
		p := filepath.Join(dir, "stacks", fmt.Sprintf("stack%02d", i))
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "compose.yaml"), []byte("services:\n  a:\n    image: busybox\n"), 0o644)
	}
	repo, err := discover.Scan(dir, discover.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// The release never runs without a policy gate: with sign jobs plus policy jobs above the
// needs limit it waits for the stages (every policy job is in an earlier stage); at or below
// the limit it needs every one of them.
func TestReleaseKeepsEveryPolicyGate(t *testing.T) {
	schema := ciSchema(t)
	cfg := Defaults()
	cfg.Registry = "registry.gitlab.com/g/p"
	cfg.Environments = []Environment{{Name: "staging", Tier: "staging", When: "automatic"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ images, stacks int }{{60, 10}, {45, 10}, {40, 10}, {3, 60}} {
		t.Run(fmt.Sprintf("%d_images_%d_stacks", tc.images, tc.stacks), func(t *testing.T) {
			repo := scaleRepo(t, tc.images, tc.stacks)
			p, err := Build(repo, discover.Plan(repo, discover.Diff{All: true}), cfg)
			if err != nil {
				t.Fatal(err)
			}
			yml := p.Bytes()
			if err := validate(t, schema, yml); err != nil {
				t.Fatal(err)
			}
			var raw map[string]any
			if err := yaml.Unmarshal(yml, &raw); err != nil {
				t.Fatal(err)
			}
			doc := map[string]map[string]any{}
			for k, v := range raw {
				if m, ok := v.(map[string]any); ok {
					doc[k] = m
				}
			}
			rel := doc["release"]
			needs, hasNeeds := rel["needs"].([]any)
			if n := len(needs); n > cfg.MaxNeeds {
				t.Fatalf("release needs %d jobs, above GitLab's limit %d", n, cfg.MaxNeeds)
			}
			stageIndex := map[string]int{}
			for i, s := range Stages {
				stageIndex[s] = i
			}
			for i := range tc.stacks {
				job := fmt.Sprintf("policy:stack%02d", i)
				pj, ok := doc[job]
				if !ok {
					t.Fatalf("no job %s", job)
				}
				if hasNeeds {
					found := false
					for _, n := range needs {
						found = found || n.(map[string]any)["job"] == job
					}
					if !found {
						t.Errorf("release does not need %s (needs %d jobs)", job, len(needs))
					}
				} else if stageIndex[pj["stage"].(string)] >= stageIndex[rel["stage"].(string)] {
					t.Errorf("release has no needs but %s is in stage %s, not before %s", job, pj["stage"], rel["stage"])
				}
			}
			if hasNeeds && len(needs) != tc.images+tc.stacks {
				t.Errorf("release needs %d jobs, want every sign and policy job (%d)", len(needs), tc.images+tc.stacks)
			}
		})
	}
}

// This repository ships the templates as a CI/CD component too: templates/sawmill-jobs.yml is
// Component() (go test -update rewrites it). Its header and body are valid CI files, and every
// input is typed, has a default and is used.
func TestComponentFile(t *testing.T) {
	want, err := Component()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(moduleRoot(t), filepath.FromSlash(ComponentPath))
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the templates (go test ./internal/pipeline/ -update rewrites it)", ComponentPath)
	}
	header, body, ok := bytes.Cut(got, []byte("\n---\n"))
	if !ok {
		t.Fatal("no --- between the spec header and the templates")
	}
	schema := ciSchema(t)
	for name, doc := range map[string][]byte{"header": header, "body": body} {
		if err := validate(t, schema, doc); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var spec struct {
		Spec struct {
			Inputs map[string]struct {
				Type, Default, Description string
			}
		}
	}
	if err := yaml.Unmarshal(header, &spec); err != nil {
		t.Fatal(err)
	}
	if len(spec.Spec.Inputs) == 0 {
		t.Fatal("no inputs")
	}
	for name, in := range spec.Spec.Inputs {
		if in.Type != "string" || in.Default == "" || in.Description == "" {
			t.Errorf("input %s: %+v", name, in)
		}
		if !bytes.Contains(body, []byte("$[[ inputs."+name+" ]]")) {
			t.Errorf("input %s is not used", name)
		}
	}
	for _, job := range []string{".sawmill-build:", ".sawmill-scan:", ".sawmill-sign:", ".sawmill-image-test:", ".sawmill-policy:", ".sawmill-release:", ".sawmill-deploy:"} {
		if !bytes.Contains(body, []byte("\n"+job+"\n")) && !bytes.HasPrefix(body, []byte(job+"\n")) {
			t.Errorf("the component has no %s", job)
		}
	}
}

// Every key a job can have, in the order and layout GitLab reads (the golden files have no artifacts paths
// and one needs:pipeline).
func TestRenderEveryJobField(t *testing.T) {
	yes, no := true, false
	p := &Pipeline{Includes: []string{"a.yml", "b.yml"}, Stages: []string{}, Variables: []Var{{"V", "1"}}, Jobs: []Job{
		{Name: "all", Extends: ".x", Stage: "build", Needs: []Need{{Job: "p", Pipeline: "$PARENT", Artifacts: true}, {Job: "q"}},
			Variables: []Var{{"A", "yes"}}, IDTokens: []Var{{"SIGSTORE_ID_TOKEN", "sigstore"}},
			Environment: &JobEnvironment{Name: "prod", Tier: "production"}, ResourceGroup: "rg",
			Rules: []Rule{{If: "$CI", When: "always"}}, AllowFailure: &no, Interruptible: &yes,
			Dotenv: "out.env", Paths: []string{"a b", "c"}},
		{Name: "none", Extends: "", Stage: "x", Needs: []Need{}},
	}}
	want := `# Generated by pipegen. Do not edit: change the repository layout, pipegen.yaml or the templates.
include:
  - local: a.yml
  - local: b.yml
stages: []
variables:
  V: "1"

all:
  extends: .x
  stage: build
  needs:
    - pipeline: $PARENT
      job: p
      artifacts: true
    - job: q
      artifacts: false
  variables:
    A: "yes"
  id_tokens:
    SIGSTORE_ID_TOKEN:
      aud: sigstore
  environment:
    name: prod
    deployment_tier: production
  resource_group: rg
  rules:
    - if: $CI
      when: always
  allow_failure: false
  interruptible: true
  artifacts:
    paths:
      - a b
      - c
    reports:
      dotenv: out.env

none:
  extends: ""
  stage: x
  needs: []
`
	if got := string(p.Bytes()); got != want {
		t.Errorf("rendered:\n%s\nwant:\n%s", got, want)
	}
}

// A pipeline large enough to be rendered in chunks (three processors: chunks of uneven job kinds, the last
// shorter) is the same bytes as rendered in one pass.
func TestChunkedRenderSameBytes(t *testing.T) {
	yes := true
	p := &Pipeline{Includes: []string{"t.yml"}, Stages: Stages, Variables: []Var{{"A", "b"}}}
	for i := range parallelJobs*2 + 1 {
		j := Job{Name: fmt.Sprintf("build:img%04d", i), Extends: ".build", Stage: "build", Variables: []Var{{"N", strconv.Itoa(i)}}}
		if i%3 == 1 {
			j.Needs = []Need{{Job: fmt.Sprintf("build:img%04d", i-1), Artifacts: true}}
			j.Interruptible = &yes
		}
		if i%7 == 0 {
			j.Dotenv = "x.env"
		}
		p.Jobs = append(p.Jobs, j)
	}
	prev := runtime.GOMAXPROCS(3)
	chunked := p.Bytes()
	runtime.GOMAXPROCS(1)
	onePass := p.Bytes()
	runtime.GOMAXPROCS(prev)
	if !bytes.Equal(chunked, onePass) {
		t.Fatalf("chunked rendering differs from one pass (%d vs %d bytes)", len(chunked), len(onePass))
	}
	if n := bytes.Count(onePass, []byte("\n\n\"build:img")); n != len(p.Jobs) {
		t.Fatalf("%d jobs after a blank line, want %d", n, len(p.Jobs))
	}
}

// The quoting fast path writes what strconv.Quote writes; indentation deeper than the spaces constant is whole.
func TestQuotedAndIndent(t *testing.T) {
	for _, s := range []string{"", "build:img0001", "a b", "~", " ", "say \"hi\"", `a\b`, "tab\there", "é", "\x7f", "line\n", "\u212a", "\xff"} {
		var b bytes.Buffer
		writeQuoted(&b, s)
		if got, want := b.String(), strconv.Quote(s); got != want {
			t.Errorf("writeQuoted(%q) = %s, want %s", s, got, want)
		}
	}
	for _, n := range []int{0, 1, len(spaces), len(spaces) + 1, 3*len(spaces) + 5} {
		var b bytes.Buffer
		indent(&b, n)
		if b.String() != strings.Repeat(" ", n) {
			t.Errorf("indent(%d) wrote %q", n, b.String())
		}
	}
}
