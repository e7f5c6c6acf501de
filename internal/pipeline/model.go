package pipeline

import (
	"fmt"
	"sort"
	"strings"

	"github.com/sabeiro/sawmill/internal/discover"
)

// Pipeline is the child pipeline.
type Pipeline struct {
	Includes  []string // local template files
	Component string   // a CI/CD component included instead of Includes
	Stages    []string
	Variables []Var
	Jobs      []Job // in rendering order
}

// Var is a CI/CD variable.
type Var struct{ Name, Value string }

// Need is one entry of a job's needs. Pipeline, when set, names another pipeline of the same
// parent-child hierarchy (`needs:pipeline:job`, e.g. the parent's ID passed as a variable).
type Need struct {
	Job       string
	Artifacts bool
	Pipeline  string
}

// Rule is one entry of a job's rules.
type Rule struct{ If, When string }

// Job is one generated job. Its body (image, script) comes from the hidden job it extends.
type Job struct {
	Name          string
	Extends       string
	Stage         string
	Needs         []Need // nil: wait for the previous stages; empty: start at once
	NoNeeds       bool   // render no needs key at all (stage ordering)
	Variables     []Var
	IDTokens      []Var // name -> aud
	Environment   *JobEnvironment
	ResourceGroup string
	Rules         []Rule
	AllowFailure  *bool
	Dotenv        string   // artifacts:reports:dotenv
	Paths         []string // artifacts:paths
	Interruptible *bool    // interruptible: may a newer pipeline on the ref cancel it
}

// JobEnvironment is a job's environment.
type JobEnvironment struct{ Name, Tier string }

// Template files, in include order, relative to Config.Templates.
var TemplateFiles = []string{"build.yml", "scan.yml", "sign.yml", "test.yml", "release.yml", "deploy.yml"}

// BuilderImages are the images of the build jobs, by builder. Both run rootless.
var BuilderImages = map[string]string{
	"buildah":  "quay.io/buildah/stable:v1.42",
	"buildkit": "moby/buildkit:v0.26.2-rootless",
}

// Stages of the child pipeline. Jobs also carry needs, so the stages only matter for
// display and for a release job that has more sign jobs than Config.MaxNeeds.
var Stages = []string{"build", "scan", "sign", "test", "release", "deploy"}

// VarName is discover.VarName: the variable prefix of an image ("go_ingest" -> "GO_INGEST").
func VarName(image string) string { return discover.VarName(image) }

// Reuse says where the reused images of a pipeline come from: the channel record `pipegen
// generate` read (docs/release.md). The zero Reuse means no record was read (an explicit
// --base): the release job resolves reused images from the channel tags itself.
type Reuse struct {
	Known   bool              // generate read the channel records
	Commit  string            // commit of the release reused images come from ("" none)
	Channel string            // the channel it was read from
	Expect  string            // digest of the ref's own channel record ("" the ref has none): the release job's compare-and-swap
	Digests map[string]string // image -> digest in that release
}

// Options are the inputs of Build besides the repository and configuration.
type Options struct {
	Reuse Reuse
	// MergeRequest: a merge request pipeline. The release is written and checked but never
	// published, and there are no deploy jobs.
	MergeRequest bool
	// PipelineID is the ID of the parent pipeline that runs generate ($CI_PIPELINE_ID there);
	// with signing.pipeline parent the images' tag carries it (ParentTag).
	PipelineID string
}

// ParentTag is the tag the build pipeline pushes its images under with signing.pipeline parent:
// the commit and the parent pipeline's ID, so that the parent's sign job finds exactly this
// pipeline's images. Without a known ID, the ID the parent passes as SAWMILL_PARENT_PIPELINE_ID.
func ParentTag(opt Options) string {
	if opt.PipelineID != "" {
		return "$CI_COMMIT_SHA-p" + opt.PipelineID
	}
	return "$CI_COMMIT_SHA-p$" + ParentPipelineVar
}

// RecordRepository is release.RecordRepository (this package does not import internal/release;
// a test in cmd/pipegen keeps the two equal).
const RecordRepository = "sawmill-release"

// ReleaseResourceGroup serialises the release jobs of one ref (GitLab expands the variable).
const ReleaseResourceGroup = "sawmill-release-$CI_COMMIT_REF_SLUG"

// Build makes the child pipeline with no channel record (see BuildWith).
func Build(repo *discover.Repo, decisions []discover.Decision, cfg Config) (*Pipeline, error) {
	return BuildWith(repo, decisions, cfg, Options{})
}

// Check runs the checks of BuildWith that need no change set: it fails when a stack has an
// override for an environment the configuration does not define, when two images map to the
// same variable name, or when an image has the name of the channel record repository.
func Check(repo *discover.Repo, cfg Config) error {
	byVar := map[string]string{}
	for _, im := range repo.Images {
		v := VarName(im.Name)
		if other, ok := byVar[v]; ok {
			return fmt.Errorf("images/%s and images/%s both export %s_DIGEST: rename one", other, im.Name, v)
		}
		byVar[v] = im.Name
		if im.Name == RecordRepository {
			return fmt.Errorf("images/%s: the name is reserved for the channel records (<registry>/%s); rename the image", im.Name, RecordRepository)
		}
	}
	envNames := make([]string, 0, len(cfg.Environments))
	for _, e := range cfg.Environments {
		envNames = append(envNames, e.Name)
	}
	for _, st := range repo.Stacks {
		for _, o := range st.Overrides {
			if _, ok := cfg.Environment(o.Env); !ok {
				return fmt.Errorf("%s: unknown environment %q (pipegen.yaml environments: %s)", o.File, o.Env, strings.Join(envNames, ", "))
			}
		}
	}
	return nil
}

// BuildWith makes the child pipeline. decisions must come from discover.Plan on the same repo.
// It fails when a stack has an override for an environment the configuration does not
// define, when two images map to the same variable name, or when an image has the name of
// the channel record repository.
//
// With signing.pipeline parent it is the build pipeline only (build, scan, test, policy jobs):
// the parent signs (ParentSignVars), then runs BuildRelease's pipeline.
func BuildWith(repo *discover.Repo, decisions []discover.Decision, cfg Config, opt Options) (*Pipeline, error) {
	p, err := buildAll(repo, decisions, cfg, opt)
	if err != nil || cfg.Signing.Pipeline != "parent" {
		return p, err
	}
	var jobs []Job
	for _, j := range p.Jobs {
		if j.Name != "release" && !strings.HasPrefix(j.Name, "deploy:") {
			jobs = append(jobs, j)
		}
	}
	p.Jobs = jobs
	return p, nil
}

// ParentPipelineVar is the variable the parent passes to its child pipelines with its own
// pipeline ID (signing.pipeline parent): the build child tags its images with it, the release
// child needs the parent's sign job by it.
const ParentPipelineVar = "SAWMILL_PARENT_PIPELINE_ID"

// ParentSignJob is the parent pipeline's sign job (signing.pipeline parent).
const ParentSignJob = "sign"

// BuildRelease is the release pipeline of signing.pipeline parent: the release job, which
// needs the parent's sign job (`needs:pipeline:job`: its dotenv report carries the digests it
// signed), and the deploy jobs. The policy gates ran in the build pipeline, which the parent's
// trigger waited for (strategy: depend) before it signed anything.
func BuildRelease(repo *discover.Repo, decisions []discover.Decision, cfg Config, opt Options) (*Pipeline, error) {
	if cfg.Signing.Pipeline != "parent" {
		return nil, fmt.Errorf("a release pipeline of its own is only made with signing.pipeline parent")
	}
	p, err := buildAll(repo, decisions, cfg, opt)
	if err != nil {
		return nil, err
	}
	var jobs []Job
	for _, j := range p.Jobs {
		switch {
		case j.Name == "release":
			j.NoNeeds = false
			j.Needs = []Need{{Pipeline: "$" + ParentPipelineVar, Job: ParentSignJob, Artifacts: true}}
			jobs = append(jobs, j)
		case strings.HasPrefix(j.Name, "deploy:"):
			jobs = append(jobs, j)
		}
	}
	p.Jobs = jobs
	return p, nil
}

// ParentSignVars are the variables of the parent's sign job (signing.pipeline parent), for the
// dotenv report of the generate job: SAWMILL_SIGN_IMAGES lists "<IMAGE>_DIGEST=<repository>"
// for every image the build pipeline builds, SAWMILL_SIGN_TAG their tag (the parent's resolve
// job resolves it to the digests), SAWMILL_SIGN_SBOM whether their SBOMs wait in the registry
// (sbom:<image> jobs), and the signing settings. Values are written as they are; the sign job expands the references in them.
func ParentSignVars(repo *discover.Repo, decisions []discover.Decision, cfg Config, opt Options) []Var {
	rebuild := map[string]bool{}
	for _, d := range decisions {
		rebuild[d.Image] = d.Rebuild
	}
	var list []string
	for _, im := range repo.Images {
		if rebuild[im.Name] {
			list = append(list, VarName(im.Name)+"_DIGEST="+cfg.Registry+"/"+im.Name)
		}
	}
	vs := []Var{{"SAWMILL_SIGN_IMAGES", strings.Join(list, " ")}, {"SAWMILL_SIGN_TAG", ParentTag(opt)},
		{"SAWMILL_SIGN_MODE", cfg.Signing.Mode}, {"SAWMILL_SIGN_FORMAT", cfg.Signing.Format}}
	if cfg.Signing.Mode == "key" {
		vs = append(vs, Var{"SAWMILL_SIGN_KEY_VARIABLE", cfg.Signing.KeyVariable})
	}
	if cfg.scanner("sbom") {
		vs = append(vs, Var{"SAWMILL_SIGN_SBOM", "true"}) // the resolve job fetches the SBOMs sbom:<image> pushed
	}
	for _, v := range []Var{{"SAWMILL_SIGNING_CONFIG", cfg.Signing.SigningConfig}, {"SAWMILL_TRUSTED_ROOT", cfg.Signing.TrustedRoot},
		{"SAWMILL_FULCIO_URL", cfg.Signing.FulcioURL}, {"SAWMILL_REKOR_URL", cfg.Signing.RekorURL}} {
		if v.Value != "" && cfg.Signing.Mode == "keyless" {
			vs = append(vs, v)
		}
	}
	return vs
}

func buildAll(repo *discover.Repo, decisions []discover.Decision, cfg Config, opt Options) (*Pipeline, error) {
	if err := Check(repo, cfg); err != nil {
		return nil, err
	}
	envNames := make([]string, 0, len(cfg.Environments))
	for _, e := range cfg.Environments {
		envNames = append(envNames, e.Name)
	}
	rebuild := make(map[string]bool, len(decisions))
	for _, d := range decisions {
		rebuild[d.Image] = d.Rebuild
	}

	// Capacity for the usual jobs (build, scan, sign per image; a few per stack and environment; the
	// release), so that the slice of ~200-byte jobs is not copied at every doubling.
	p := &Pipeline{Stages: Stages, Jobs: make([]Job, 0, 3*len(repo.Images)+(2+len(cfg.Environments))*len(repo.Stacks)+8)}
	parent := cfg.Signing.Pipeline == "parent"
	tag := "$CI_COMMIT_SHA"
	if parent {
		// Unique per pipeline: the parent's sign job resolves the digests the build pipeline
		// pushed by this tag (a parent cannot read a child's artifacts, gitlab-org/gitlab#285100).
		tag = ParentTag(opt)
	}
	if cfg.Component != "" {
		p.Component = cfg.Component
	} else {
		for _, f := range TemplateFiles {
			p.Includes = append(p.Includes, cfg.Templates+"/"+f)
		}
	}
	p.Variables = []Var{
		{"SAWMILL_REGISTRY", cfg.Registry},
		{"SAWMILL_DEFAULT_BRANCH", cfg.DefaultBranch},
		{"SAWMILL_TAG", tag},
		{"SAWMILL_BUILDER", cfg.Builder},
		{"SAWMILL_SIGN_MODE", cfg.Signing.Mode},
		{"SAWMILL_SIGN_FORMAT", cfg.Signing.Format},
		{"SAWMILL_BUILD_IMAGE", BuilderImages[cfg.Builder]},
		{"PIPEGEN", cfg.Tool.Command},
		{"PIPEGEN_IMAGE", cfg.Tool.Image},
		{"AGENT", cfg.Tool.Agent},
	}
	if cfg.Signing.Mode == "key" {
		p.Variables = append(p.Variables, Var{"SAWMILL_SIGN_KEY_VARIABLE", cfg.Signing.KeyVariable})
	}
	for _, v := range []Var{{"SAWMILL_SIGNING_CONFIG", cfg.Signing.SigningConfig}, {"SAWMILL_TRUSTED_ROOT", cfg.Signing.TrustedRoot},
		{"SAWMILL_FULCIO_URL", cfg.Signing.FulcioURL}, {"SAWMILL_REKOR_URL", cfg.Signing.RekorURL}} {
		if v.Value != "" && cfg.Signing.Mode == "keyless" {
			p.Variables = append(p.Variables, v)
		}
	}
	if opt.Reuse.Known {
		expect := opt.Reuse.Expect
		if expect == "" {
			expect = "none"
		}
		p.Variables = append(p.Variables,
			Var{"SAWMILL_BASE_COMMIT", opt.Reuse.Commit},
			Var{"SAWMILL_BASE_CHANNEL", opt.Reuse.Channel},
			Var{"SAWMILL_CHANNEL_RECORD", expect})
		// The digests of the reused images, resolved once here: builds FROM them and the
		// release pins them, whatever the channel tags say by then.
		for _, im := range repo.Images {
			if !rebuild[im.Name] {
				d := opt.Reuse.Digests[im.Name]
				if d == "" {
					return nil, fmt.Errorf("image %s is reused but the release of %s has no digest for it", im.Name, opt.Reuse.Commit)
				}
				p.Variables = append(p.Variables, Var{VarName(im.Name) + "_DIGEST", d})
			}
		}
	}
	yes, no := true, false
	scan := cfg.scanner("container_scanning") || cfg.scanner("sbom")

	var rebuilt, reused, signJobs []string
	for _, im := range repo.Images {
		if !rebuild[im.Name] {
			reused = append(reused, im.Name)
			continue
		}
		rebuilt = append(rebuilt, im.Name)
		v := VarName(im.Name)
		common := []Var{
			{"SAWMILL_IMAGE", im.Name},
			{"SAWMILL_REPOSITORY", cfg.Registry + "/" + im.Name},
			{"SAWMILL_DIGEST_VAR", v + "_DIGEST"},
		}
		build := Job{
			Name:    "build:" + im.Name,
			Extends: ".sawmill-build",
			Stage:   "build",
			Needs:   []Need{},
			Variables: append(cloneVars(common),
				Var{"SAWMILL_CONTEXT", im.Context},
				Var{"SAWMILL_DOCKERFILE", im.Dockerfile},
				Var{"SAWMILL_TARGET", im.Target},
				Var{"SAWMILL_PLATFORMS", strings.Join(im.Platforms, ",")},
				Var{"SAWMILL_BUILD_ARGS", buildArgs(im, rebuild, cfg.Registry, opt.Reuse.Known)},
				Var{"SAWMILL_DOTENV", "build-" + im.Name + ".env"},
			),
			Dotenv:        "build-" + im.Name + ".env",
			Interruptible: &yes,
		}
		for _, d := range im.DependsOn {
			if rebuild[d] {
				build.Needs = append(build.Needs, Need{Job: "build:" + d, Artifacts: true})
			}
		}
		p.Jobs = append(p.Jobs, build)
		sign := Job{
			Name:          "sign:" + im.Name,
			Extends:       ".sawmill-sign",
			Stage:         "sign",
			Needs:         []Need{{Job: build.Name, Artifacts: true}},
			Variables:     append(cloneVars(common), Var{"SAWMILL_DOTENV", "sign-" + im.Name + ".env"}),
			Dotenv:        "sign-" + im.Name + ".env",
			Interruptible: &yes,
		}
		if scan {
			p.Jobs = append(p.Jobs, Job{
				Name:          "scan:" + im.Name,
				Extends:       ".sawmill-scan",
				Stage:         "scan",
				Needs:         []Need{{Job: build.Name, Artifacts: true}},
				Variables:     append(cloneVars(common), Var{"SAWMILL_SCANNERS", scanners(cfg)}, Var{"SAWMILL_SEVERITY", severities(cfg.SeverityThreshold)}),
				Interruptible: &yes,
			})
			sign.Needs = append(sign.Needs, Need{Job: "scan:" + im.Name, Artifacts: true}) // the SBOM to attest
		}
		// The image's own tests (image.yaml test:), in the built image; they gate signing too.
		if len(im.Test) > 0 {
			p.Jobs = append(p.Jobs, Job{
				Name:          "test:" + im.Name,
				Extends:       ".sawmill-image-test",
				Stage:         "scan",
				Needs:         []Need{{Job: build.Name, Artifacts: true}},
				Variables:     append(cloneVars(common), Var{"SAWMILL_TEST_SCRIPT", strings.Join(im.Test, "\n")}),
				Interruptible: &yes,
			})
			sign.Needs = append(sign.Needs, Need{Job: "test:" + im.Name})
		}
		if cfg.Signing.Mode == "keyless" {
			sign.IDTokens = []Var{{"SIGSTORE_ID_TOKEN", "sigstore"}}
		}
		if parent {
			if cfg.scanner("sbom") {
				// The parent's sign job cannot read scan:<image>'s SBOM: it goes to the registry.
				p.Jobs = append(p.Jobs, Job{
					Name:          "sbom:" + im.Name,
					Extends:       ".sawmill-sbom-push",
					Stage:         "sign",
					Needs:         []Need{{Job: build.Name, Artifacts: true}, {Job: "scan:" + im.Name, Artifacts: true}},
					Variables:     cloneVars(common),
					Interruptible: &yes,
				})
			}
			continue // the parent signs
		}
		p.Jobs = append(p.Jobs, sign)
		signJobs = append(signJobs, sign.Name)
	}
	for _, st := range repo.Stacks {
		p.Jobs = append(p.Jobs, Job{
			Name:    "policy:" + st.Name,
			Extends: ".sawmill-policy",
			Stage:   "test",
			Needs:   []Need{},
			Variables: []Var{
				{"SAWMILL_STACK", st.Name},
				{"SAWMILL_STACK_DIR", st.Dir},
				{"SAWMILL_ENVIRONMENTS", strings.Join(envNames, " ")},
			},
			Interruptible: &yes,
		})
	}
	stackNames := make([]string, 0, len(repo.Stacks))
	for _, st := range repo.Stacks {
		stackNames = append(stackNames, st.Name)
	}
	release := Job{
		Name:    "release",
		Extends: ".sawmill-release",
		Stage:   "release",
		Needs:   []Need{},
		Variables: []Var{
			{"SAWMILL_REBUILT", strings.Join(rebuilt, " ")},
			{"SAWMILL_REUSED", strings.Join(reused, " ")},
			{"SAWMILL_STACKS", strings.Join(stackNames, " ")},
		},
		ResourceGroup: ReleaseResourceGroup,
		Interruptible: &no,
	}
	if opt.MergeRequest {
		release.Variables = append(release.Variables, Var{"SAWMILL_PUBLISH", "false"})
	}
	// The release waits for every sign job (their dotenv digests) and every policy job (the
	// gates). Above GitLab's needs limit it has no needs at all: it then waits for every job
	// of the earlier stages (build, scan, sign, test: every sign and policy job included) and
	// gets every earlier job's dotenv report. No gate is ever left out.
	if len(signJobs)+len(repo.Stacks) > cfg.MaxNeeds {
		release.NoNeeds = true
	} else {
		for _, s := range signJobs {
			release.Needs = append(release.Needs, Need{Job: s, Artifacts: true})
		}
		for _, st := range repo.Stacks {
			release.Needs = append(release.Needs, Need{Job: "policy:" + st.Name})
		}
	}
	p.Jobs = append(p.Jobs, release)
	if opt.MergeRequest {
		return p, nil // merge request pipelines never deploy
	}

	envs := append([]Environment(nil), cfg.Environments...)
	sort.SliceStable(envs, func(i, j int) bool { return tierRank(envs[i].Tier) < tierRank(envs[j].Tier) })
	var prev *Environment
	for i, e := range envs {
		cond := fmt.Sprintf(`$CI_COMMIT_BRANCH == "%s"`, e.Branch)
		if e.Protected {
			cond += ` && $CI_COMMIT_REF_PROTECTED == "true"`
		}
		j := Job{
			Name:          "deploy:" + e.Name,
			Extends:       ".sawmill-deploy",
			Stage:         "deploy",
			Needs:         []Need{{Job: "release", Artifacts: true}},
			Variables:     []Var{{"SAWMILL_ENVIRONMENT", e.Name}},
			Environment:   &JobEnvironment{Name: e.Name, Tier: e.Tier},
			ResourceGroup: "deploy-" + e.Name,
			Interruptible: &no,
		}
		// An environment is promoted only after the previous one (by tier) deployed the same
		// release, when both deploy from the same branch (the previous job then always
		// exists when this one does).
		if prev != nil && prev.Branch == e.Branch && (!prev.Protected || e.Protected) {
			j.Needs = append(j.Needs, Need{Job: "deploy:" + prev.Name})
		}
		if e.When == "automatic" {
			j.Rules = []Rule{{If: cond, When: "on_success"}}
		} else {
			j.Rules = []Rule{{If: cond, When: "manual"}}
			j.AllowFailure = &yes
		}
		p.Jobs = append(p.Jobs, j)
		prev = &envs[i]
	}
	return p, nil
}

func cloneVars(v []Var) []Var { return append([]Var(nil), v...) }

func tierRank(t string) int {
	for i, x := range []string{"development", "testing", "other", "staging", "production"} {
		if x == t {
			return i
		}
	}
	return len(Tiers)
}

// severities is trivy's --severity list for a threshold ("" for none: report only).
func severities(threshold string) string {
	all := []string{"LOW", "MEDIUM", "HIGH", "CRITICAL"}
	for i, s := range all {
		if strings.EqualFold(s, threshold) {
			return strings.Join(all[i:], ",")
		}
	}
	return ""
}

func scanners(cfg Config) string {
	var s []string
	for _, x := range []string{"container_scanning", "sbom"} {
		if cfg.scanner(x) {
			s = append(s, x)
		}
	}
	return strings.Join(s, " ")
}

// buildArgs renders an image's build arguments one per line (NAME=value): its image.yaml
// build_args, REGISTRY, and for every repository image it depends on <DEP>_IMAGE, the
// reference to build FROM — the digest built in this pipeline (from the base's dotenv), the
// digest generate resolved from the base release (a pipeline variable), or, without a
// channel record (--base), the branch's release tag (see docs/release.md).
func buildArgs(im discover.Image, rebuild map[string]bool, registry string, digests bool) string {
	lines := []string{"REGISTRY=" + registry}
	for _, a := range im.BuildArgs {
		lines = append(lines, a.Name+"="+a.Value)
	}
	for _, d := range im.DependsOn {
		v := VarName(d)
		if rebuild[d] || digests {
			lines = append(lines, fmt.Sprintf("%s_IMAGE=%s/%s@${%s_DIGEST}", v, registry, d, v))
		} else {
			lines = append(lines, fmt.Sprintf("%s_IMAGE=%s/%s:release-${CI_COMMIT_REF_SLUG}", v, registry, d))
		}
	}
	return strings.Join(lines, "\n")
}
