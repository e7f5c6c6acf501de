// Package pipeline turns a discovered repository into a GitLab CI child pipeline.
//
// In: a [discover.Repo], the per-image [discover.Decision]s, a validated [Config] (the
// contents of pipegen.yaml) and [Options] (where reused images come from, merge request or
// not). Out: a [Pipeline] model and its deterministic YAML rendering (same input, same bytes:
// no maps iterated unsorted, no timestamps). It also embeds the default job templates
// (pipelines/*.yml), the default pipegen.yaml and the parent .gitlab-ci.yml that `pipegen init`
// writes, and makes the CI/CD component of the templates ([Component]).
//
// It imports the standard library and internal/discover only; it reads no files and no
// environment (configuration is read by cmd/pipegen).
package pipeline

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Config is pipegen.yaml.
type Config struct {
	// Registry is the path images are pushed under: <registry>/<image>.
	Registry string `mapstructure:"registry" yaml:"registry"`
	// DefaultBranch is the branch staging deploys from by default.
	DefaultBranch string        `mapstructure:"default_branch" yaml:"default_branch"`
	Environments  []Environment `mapstructure:"environments" yaml:"environments"`
	Signing       Signing       `mapstructure:"signing" yaml:"signing"`
	// Builder is buildah or buildkit (both rootless, no docker-in-docker).
	Builder string `mapstructure:"builder" yaml:"builder"`
	// Scanners enabled per image: container_scanning, sbom. (SAST, Secret Detection and
	// Dependency Scanning run in the parent pipeline from GitLab's templates.)
	Scanners []string `mapstructure:"scanners" yaml:"scanners"`
	// SeverityThreshold: container scanning fails (and the image is not signed) on a
	// vulnerability of this severity or higher; none only reports.
	SeverityThreshold string `mapstructure:"severity_threshold" yaml:"severity_threshold"`
	// Templates is the directory of the job templates, relative to the repository root.
	Templates string `mapstructure:"templates" yaml:"templates"`
	// Component, when set, is the CI/CD component the child pipeline includes instead of the
	// templates directory, e.g. gitlab.com/sabeiro/sawmill/sawmill-jobs@1.2.0.
	Component string `mapstructure:"component" yaml:"component"`
	// Tool is how jobs run pipegen itself (the release job).
	Tool Tool `mapstructure:"tool" yaml:"tool"`
	// MaxNeeds is the most entries a job's needs may have (GitLab's limit, 50 by default);
	// a release job that would need more waits for its stage instead.
	MaxNeeds int `mapstructure:"max_needs" yaml:"max_needs"`
}

// Environment is one deployment target.
type Environment struct {
	Name      string `mapstructure:"name" yaml:"name"`
	Tier      string `mapstructure:"tier" yaml:"tier"`
	When      string `mapstructure:"when" yaml:"when"`
	Protected bool   `mapstructure:"protected" yaml:"protected"`
	Branch    string `mapstructure:"branch" yaml:"branch"`
}

// Signing configures the sign jobs.
type Signing struct {
	Mode        string `mapstructure:"mode" yaml:"mode"`                 // keyless | key
	KeyVariable string `mapstructure:"key_variable" yaml:"key_variable"` // CI/CD variable holding the private key (mode key)
	Issuer      string `mapstructure:"issuer" yaml:"issuer"`             // OIDC issuer the verifier expects (mode keyless)
	Format      string `mapstructure:"format" yaml:"format"`             // bundle | legacy
	// Pipeline says where images are signed: child (the generated pipeline's sign:<image> jobs) or
	// parent (one sign job of the parent pipeline, after the child build pipeline: for GitLab
	// versions whose child-pipeline ID tokens lack the claims Fulcio needs; docs/pipegen.md).
	Pipeline string `mapstructure:"pipeline" yaml:"pipeline"`
	// A self-hosted Sigstore (mode keyless): cosign's signing config and trusted root (file
	// paths in the job, e.g. "$SIGSTORE_SIGNING_CONFIG" for a file-type variable), or the
	// Fulcio and Rekor URLs. Empty: the public Sigstore (GitLab.com only).
	SigningConfig string `mapstructure:"signing_config" yaml:"signing_config"`
	TrustedRoot   string `mapstructure:"trusted_root" yaml:"trusted_root"`
	FulcioURL     string `mapstructure:"fulcio_url" yaml:"fulcio_url"`
	RekorURL      string `mapstructure:"rekor_url" yaml:"rekor_url"`
}

// Tool says how a job runs pipegen.
type Tool struct {
	Image   string `mapstructure:"image" yaml:"image"`     // image of the generate, policy and release jobs
	Command string `mapstructure:"command" yaml:"command"` // how to run pipegen, e.g. "pipegen" or "go run ./cmd/pipegen"
	Agent   string `mapstructure:"agent" yaml:"agent"`     // how to run the policy check, e.g. "agent" or "go run ./cmd/agent"
}

// Allowed values.
var (
	Tiers      = []string{"production", "staging", "testing", "development", "other"}
	Whens      = []string{"automatic", "manual"}
	Modes      = []string{"keyless", "key"}
	Formats    = []string{"bundle", "legacy"}
	SignIn     = []string{"child", "parent"}
	Builders   = []string{"buildah", "buildkit"}
	Scanners   = []string{"container_scanning", "sbom"}
	Severities = []string{"none", "low", "medium", "high", "critical"}
)

// Defaults returns the configuration used for keys pipegen.yaml does not set.
func Defaults() Config {
	return Config{
		DefaultBranch:     "main",
		Signing:           Signing{Mode: "keyless", KeyVariable: "COSIGN_PRIVATE_KEY", Issuer: "https://gitlab.com", Format: "bundle", Pipeline: "child"},
		Builder:           "buildah",
		Scanners:          slices.Clone(Scanners),
		SeverityThreshold: "high",
		Templates:         "pipelines",
		Tool:              Tool{Image: "golang:1.26", Command: "pipegen", Agent: "agent"},
		MaxNeeds:          50,
	}
}

var (
	envNameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	registryRE  = regexp.MustCompile(`^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*$`)
	varNameRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	componentRE = regexp.MustCompile(`^(\$CI_SERVER_FQDN|[a-zA-Z0-9.-]+(:[0-9]+)?)(/[a-zA-Z0-9_.-]+){2,}@[a-zA-Z0-9_.~^-]+$`)
)

func oneOf(field, v string, allowed []string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return fmt.Errorf("%s: %q is not one of %s", field, v, strings.Join(allowed, ", "))
}

// Validate checks every field and fills per-environment defaults (branch). Errors name the
// field, e.g. "environments[1].tier".
func (c *Config) Validate() error {
	var errs []error
	if c.Registry == "" {
		errs = append(errs, errors.New("registry: required (e.g. registry.gitlab.com/group/project)"))
	} else if !registryRE.MatchString(c.Registry) {
		errs = append(errs, fmt.Errorf("registry: %q is not a registry path (host[:port]/lowercase/path, no tag, no trailing slash)", c.Registry))
	}
	if c.DefaultBranch == "" {
		errs = append(errs, errors.New("default_branch: required"))
	}
	seen := map[string]bool{}
	for i := range c.Environments {
		e := &c.Environments[i]
		f := fmt.Sprintf("environments[%d]", i)
		if !envNameRE.MatchString(e.Name) {
			errs = append(errs, fmt.Errorf("%s.name: %q is not a valid environment name (lowercase letters, digits, '-', '_')", f, e.Name))
		}
		if seen[e.Name] {
			errs = append(errs, fmt.Errorf("%s.name: environment %q is defined twice", f, e.Name))
		}
		seen[e.Name] = true
		if err := oneOf(f+".tier", e.Tier, Tiers); err != nil {
			errs = append(errs, err)
		}
		if e.When == "" {
			e.When = "manual"
		}
		if err := oneOf(f+".when", e.When, Whens); err != nil {
			errs = append(errs, err)
		}
		if e.Branch == "" {
			e.Branch = c.DefaultBranch
		}
	}
	if err := oneOf("signing.mode", c.Signing.Mode, Modes); err != nil {
		errs = append(errs, err)
	}
	if err := oneOf("signing.format", c.Signing.Format, Formats); err != nil {
		errs = append(errs, err)
	}
	if err := oneOf("signing.pipeline", c.Signing.Pipeline, SignIn); err != nil {
		errs = append(errs, err)
	}
	if c.Signing.Mode == "key" && !varNameRE.MatchString(c.Signing.KeyVariable) {
		errs = append(errs, fmt.Errorf("signing.key_variable: %q is not a CI/CD variable name", c.Signing.KeyVariable))
	}
	if c.Signing.Mode == "keyless" && !strings.HasPrefix(c.Signing.Issuer, "https://") {
		errs = append(errs, fmt.Errorf("signing.issuer: %q must be an https URL (e.g. https://gitlab.com)", c.Signing.Issuer))
	}
	for f, u := range map[string]string{"signing.fulcio_url": c.Signing.FulcioURL, "signing.rekor_url": c.Signing.RekorURL} {
		if u != "" && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			errs = append(errs, fmt.Errorf("%s: %q is not a URL", f, u))
		}
	}
	if err := oneOf("builder", c.Builder, Builders); err != nil {
		errs = append(errs, err)
	}
	for i, s := range c.Scanners {
		if s == "sast" {
			errs = append(errs, fmt.Errorf("scanners[%d]: sast runs in the parent pipeline now, from GitLab's SAST template (include: template: Security/SAST.gitlab-ci.yml, as pipegen init writes it): remove it here", i))
			continue
		}
		if err := oneOf(fmt.Sprintf("scanners[%d]", i), s, Scanners); err != nil {
			errs = append(errs, err)
		}
	}
	if err := oneOf("severity_threshold", c.SeverityThreshold, Severities); err != nil {
		errs = append(errs, err)
	}
	if c.Templates == "" || strings.HasPrefix(c.Templates, "/") || strings.Contains(c.Templates, "..") {
		errs = append(errs, fmt.Errorf("templates: %q must be a directory inside the repository", c.Templates))
	}
	if c.Component != "" && !componentRE.MatchString(c.Component) {
		errs = append(errs, fmt.Errorf("component: %q is not <host>/<project path>/<component>@<version>", c.Component))
	}
	if c.Tool.Command == "" {
		errs = append(errs, errors.New("tool.command: required"))
	}
	if c.Tool.Agent == "" {
		errs = append(errs, errors.New("tool.agent: required"))
	}
	if c.Tool.Image == "" {
		errs = append(errs, errors.New("tool.image: required"))
	}
	if c.MaxNeeds < 1 {
		errs = append(errs, fmt.Errorf("max_needs: %d must be at least 1", c.MaxNeeds))
	}
	return errors.Join(errs...)
}

// Environment returns the environment called name.
func (c *Config) Environment(name string) (Environment, bool) {
	for _, e := range c.Environments {
		if e.Name == name {
			return e, true
		}
	}
	return Environment{}, false
}

func (c *Config) scanner(s string) bool { return slices.Contains(c.Scanners, s) }
