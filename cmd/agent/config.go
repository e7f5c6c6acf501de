package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/verify"
)

// Config is agent.yaml, the settings of `agent run`. Every key can also be SAWMILL_<KEY> (gitlab.url:
// SAWMILL_GITLAB_URL) or a flag, in rising precedence. An unknown key or an invalid value is a usage error
// (exit 2) naming the key and the file.
type Config struct {
	Environment string        `mapstructure:"environment"`
	Source      string        `mapstructure:"source"`
	GitLab      GitLabConfig  `mapstructure:"gitlab"`
	Git         GitConfig     `mapstructure:"git"`
	Dir         string        `mapstructure:"dir"`
	Stacks      []string      `mapstructure:"stacks"`
	Interval    time.Duration `mapstructure:"interval"`
	Jitter      float64       `mapstructure:"jitter"`
	Timeout     time.Duration `mapstructure:"timeout"`
	// CycleTimeout bounds one whole cycle (every stack of a release, with rollbacks).
	CycleTimeout time.Duration `mapstructure:"cycle_timeout"`
	Listen       string        `mapstructure:"listen"`
	// TLS serves the listen address over HTTPS (cert_file, key_file).
	TLS     TLSConfig     `mapstructure:"tls"`
	Webhook WebhookConfig `mapstructure:"webhook"`
	// Status: /status and /metrics on another address, or behind a token.
	Status    StatusConfig `mapstructure:"status"`
	StateDir  string       `mapstructure:"state_dir"`
	Lease     LeaseConfig  `mapstructure:"lease"`
	LogLevel  string       `mapstructure:"log_level"`
	LogFormat string       `mapstructure:"log_format"`
	// What a release may read besides the environment's CI/CD variables: Variables by value, and PassEnv by
	// name from the agent's environment (never SAWMILL_* nor the tokens). Nothing else of the agent's
	// environment reaches a release.
	Variables map[string]string `mapstructure:"variables"`
	PassEnv   []string          `mapstructure:"pass_env"`
	// Tier is the environment's tier (GitLab's deployment tiers): production turns on the production rules.
	Tier string `mapstructure:"tier"`
	// Grants are the exceptions (and the edge role) the platform grants; a release's labels only request them.
	Grants []GrantConfig `mapstructure:"grants"`
	// AllowedHostPaths are the host paths bind mounts may expose (none by default).
	AllowedHostPaths []string `mapstructure:"allowed_host_paths"`
	// The signature and policy gates.
	PolicyMode        string   `mapstructure:"policy_mode"`
	Policies          []string `mapstructure:"policies"`
	NoDefaultPolicies bool     `mapstructure:"no_default_policies"`
	AllowedRegistries []string `mapstructure:"allowed_registries"`
	SkipVerify        bool     `mapstructure:"skip_verify"`
	// RegistryTimeout bounds the verification of one image (resolving it and fetching its signatures).
	RegistryTimeout time.Duration       `mapstructure:"registry_timeout"`
	Trust           *verify.TrustPolicy `mapstructure:"trust"`

	// History: how many releases the agent keeps (agent history, agent rollback).
	History HistoryConfig `mapstructure:"history"`
	// Notify are the notification targets, SOPS the age identity of SOPS-encrypted secrets (notify.go).
	Notify []NotifyConfig `mapstructure:"notify"`
	SOPS   SOPSConfig     `mapstructure:"sops"`
}

// GitLabConfig says where the releases and variables come from (source gitlab). The token itself only comes
// from the environment variable TokenEnv or the file TokenFile.
type GitLabConfig struct {
	URL       string `mapstructure:"url"`
	Project   string `mapstructure:"project"`
	TokenEnv  string `mapstructure:"token_env"`
	TokenFile string `mapstructure:"token_file"`
	Variables bool   `mapstructure:"variables"`
	// Deployments records every outcome as a deployment of the environment (running, then success or
	// failed), besides the commit status.
	Deployments bool `mapstructure:"deployments"`
	// Timeout bounds every call to GitLab's API.
	Timeout time.Duration `mapstructure:"timeout"`
}

// GitConfig is source git: a repository, a branch or tag, and the release directory inside it.
type GitConfig struct {
	URL  string `mapstructure:"url"`
	Ref  string `mapstructure:"ref"`
	Path string `mapstructure:"path"`
}

// TLSConfig is a certificate and key for the HTTP listener.
type TLSConfig struct {
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
}

// StatusConfig says where /status and /metrics are served: Listen (another address, e.g. a manager-local
// one; empty: with the webhook on listen) and TokenEnv (the environment variable whose value a request must
// carry as `Authorization: Bearer <token>`; empty: no token).
type StatusConfig struct {
	Listen   string `mapstructure:"listen"`
	TokenEnv string `mapstructure:"token_env"`
}

// WebhookConfig says where the webhook's token is: the environment variable TokenEnv, or the file TokenFile
// (a Swarm secret, for the agent running as a service).
type WebhookConfig struct {
	TokenEnv  string `mapstructure:"token_env"`
	TokenFile string `mapstructure:"token_file"`
}

// GrantConfig grants one rule's exception (or the role edge) to a service of a stack, in some environments.
type GrantConfig struct {
	Rule    string `mapstructure:"rule"`
	Stack   string `mapstructure:"stack"`
	Service string `mapstructure:"service"`
	// Environments limits the grant; empty: every environment this configuration serves.
	Environments []string `mapstructure:"environments"`
}

// HistoryConfig is the release history: Keep releases (with their files, for agent rollback) in the state
// directory.
type HistoryConfig struct {
	Keep int `mapstructure:"keep"`
}

// LeaseConfig is the swarm lease that elects the one acting agent.
type LeaseConfig struct {
	TTL      time.Duration `mapstructure:"ttl"`
	Disabled bool          `mapstructure:"disabled"`
	// Name is the Swarm config holding the lease: the agents that share one elect one actor.
	Name string `mapstructure:"name"`
}

// defaultConfig is every key's default; it also makes every key known to viper, so that SAWMILL_* variables
// reach nested keys.
func defaultConfig() Config {
	return Config{
		Source:       "gitlab",
		GitLab:       GitLabConfig{TokenEnv: "SAWMILL_GITLAB_TOKEN", Timeout: 30 * time.Second, Deployments: true},
		Git:          GitConfig{Ref: "main", Path: "release"},
		Interval:     time.Minute,
		Jitter:       0.1,
		Timeout:      5 * time.Minute,
		CycleTimeout: 15 * time.Minute,
		Listen:       "127.0.0.1:9090",
		Webhook:      WebhookConfig{TokenEnv: "SAWMILL_WEBHOOK_TOKEN"},
		StateDir:     "/var/lib/sawmill-agent",
		History:      HistoryConfig{Keep: 20},
		Lease:        LeaseConfig{TTL: 30 * time.Second, Name: "sawmill-agent-lease"},
		LogLevel:     "info",
		LogFormat:    "text",
		PolicyMode:   string(policy.ModeEnforce),
		Tier:         "production",
		// A registry answers within seconds; the default leaves room for a slow one and a large index.
		RegistryTimeout: 30 * time.Second,
	}
}

// runFlags are the flags of `agent run` that set a config key (the flag's name with '-' for '_').
var runFlags = []string{"environment", "source", "dir", "listen", "state-dir", "interval", "timeout", "policy-mode", "skip-verify"}

// loadConfig reads the config file (--config), the SAWMILL_* variables and the flags into a Config, and
// validates it.
func loadConfig(v *viper.Viper, cmd *cobra.Command) (*Config, error) {
	for key, val := range flatten(defaultConfig()) {
		v.SetDefault(key, val)
	}
	path, _ := cmd.Flags().GetString("config")
	where := "settings"
	var fileVars map[string]string
	if path != "" {
		where = "config " + path
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, usageError{fmt.Errorf("config %s: %w", path, err)}
		}
		if err := unknownKeys(b, reflect.TypeFor[Config]()); err != nil {
			return nil, usageError{fmt.Errorf("config %s: %w", path, err)}
		}
		if fileVars, err = variablesOf(b); err != nil {
			return nil, usageError{fmt.Errorf("config %s: %w", path, err)}
		}
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return nil, usageError{fmt.Errorf("config %s: %w", path, err)}
		}
	}
	for _, name := range runFlags {
		_ = v.BindPFlag(flagKey(name), cmd.Flags().Lookup(name))
	}
	var c Config
	hook := viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(mapstructure.StringToTimeDurationHookFunc(), mapstructure.StringToSliceHookFunc(",")))
	if err := v.UnmarshalExact(&c, hook); err != nil {
		msg := strings.TrimPrefix(err.Error(), "decoding failed due to the following error(s):\n\n")
		return nil, usageError{fmt.Errorf("%s: %s", where, strings.ReplaceAll(msg, "\n", "; "))}
	}
	// Viper folds keys to lower case; variable names keep theirs.
	c.Variables = fileVars
	if err := c.validate(); err != nil {
		return nil, usageError{fmt.Errorf("%s: %w", where, err)}
	}
	return &c, nil
}

// variablesOf reads the `variables:` mapping of the config file with its names as written.
func variablesOf(b []byte) (map[string]string, error) {
	var doc struct {
		Variables map[string]string `yaml:"variables"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("variables: %w", err)
	}
	return doc.Variables, nil
}

// validate refuses values the agent cannot run with, naming the key.
func (c *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	if c.Environment == "" {
		bad("environment", "set it in the config file, SAWMILL_ENVIRONMENT or --environment")
	}
	if !slices.Contains([]string{"gitlab", "git", "dir"}, c.Source) {
		bad("source", "%q: use gitlab, git or dir", c.Source)
	}
	if c.Interval <= 0 {
		bad("interval", "%s: must be positive", c.Interval)
	}
	if c.Jitter < 0 || c.Jitter >= 1 {
		bad("jitter", "%g: must be at least 0 and below 1", c.Jitter)
	}
	if c.Timeout <= 0 {
		bad("timeout", "%s: must be positive", c.Timeout)
	}
	if c.GitLab.Timeout <= 0 {
		bad("gitlab.timeout", "%s: must be positive", c.GitLab.Timeout)
	}
	if c.CycleTimeout < c.Timeout {
		bad("cycle_timeout", "%s: must be at least timeout (%s): a cycle includes a rollout", c.CycleTimeout, c.Timeout)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls", "needs both cert_file and key_file")
	}
	if c.History.Keep < 2 || c.History.Keep > 1000 {
		bad("history.keep", "%d: must be between 2 and 1000 (a rollback needs an earlier release)", c.History.Keep)
	}
	if !c.Lease.Disabled && c.Lease.TTL < 3*time.Second {
		bad("lease.ttl", "%s: must be at least 3s", c.Lease.TTL)
	}

	if _, err := policy.ParseMode(c.PolicyMode); err != nil {
		bad("policy_mode", "%w", err)
	}
	if !slices.Contains([]string{"production", "staging", "testing", "development", "other"}, c.Tier) {
		bad("tier", "%q: use production, staging, testing, development or other", c.Tier)
	}
	for _, name := range c.PassEnv {
		if strings.HasPrefix(name, "SAWMILL_") || name == c.GitLab.TokenEnv || name == c.Webhook.TokenEnv {
			bad("pass_env", "%s: the agent's own settings and tokens never reach a release", name)
		}
	}
	for i, g := range c.Grants {
		if g.Rule == "" || g.Stack == "" || g.Service == "" {
			bad(fmt.Sprintf("grants[%d]", i), "needs rule, stack and service (service * for every service of the stack)")
		}
	}
	errs = append(errs, c.validateNotify()...)
	return errors.Join(errs...)
}

// unknownKeys returns an error naming the line and key of the first key of the YAML document b that t (a
// struct with mapstructure tags) does not have, looking into nested structs, slices and pointers.
func unknownKeys(b []byte, t reflect.Type) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil
	}
	return walkKeys(doc.Content[0], t, "")
}

func walkKeys(n *yaml.Node, t reflect.Type, prefix string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for f := range t.Fields() {
			if tag, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ","); tag != "" && tag != "-" {
				fields[tag] = f.Type
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			ft, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("line %d: unknown key %q", k.Line, prefix+k.Value)
			}
			if err := walkKeys(n.Content[i+1], ft, prefix+k.Value+"."); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			if err := walkKeys(item, t.Elem(), fmt.Sprintf("%s[%d].", strings.TrimSuffix(prefix, "."), i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// flatten lists the leaf keys of c (dotted, as viper names them) with their values; the trust policy is
// left out (it has no default).
func flatten(c Config) map[string]any {
	out := map[string]any{}
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		for i, f := range slices.Collect(v.Type().Fields()) {
			tag, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			fv := v.Field(i)
			switch {
			case f.Type.Kind() == reflect.Pointer:
			case f.Type.Kind() == reflect.Struct:
				walk(fv, prefix+tag+".")
			default:
				out[prefix+tag] = fv.Interface()
			}
		}
	}
	walk(reflect.ValueOf(c), "")
	return out
}

// flagKey maps a flag name to its config key (state-dir -> state_dir).
func flagKey(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// releaseEnv is what a release may read besides the CI/CD variables: the configured values, and the
// passed-through names from the agent's environment (getenv), as KEY=VALUE, sorted.
func (c *Config) releaseEnv(getenv func(string) (string, bool)) []string {
	vars := maps.Clone(c.Variables)
	if vars == nil {
		vars = map[string]string{}
	}
	for _, name := range c.PassEnv {
		if v, ok := getenv(name); ok {
			vars[name] = v
		}
	}
	out := make([]string, 0, len(vars))
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// grants are the configured grants for environment, as the policies take them.
func (c *Config) grants() []policy.Grant {
	var out []policy.Grant
	for _, g := range c.Grants {
		if len(g.Environments) == 0 || slices.Contains(g.Environments, c.Environment) {
			out = append(out, policy.Grant{Rule: g.Rule, Stack: g.Stack, Service: g.Service})
		}
	}
	return out
}

// webhookToken is the webhook's token: the file webhook.token_file when set, else $webhook.token_env.
func (c *Config) webhookToken() (string, error) {
	if c.Webhook.TokenFile != "" {
		b, err := os.ReadFile(c.Webhook.TokenFile)
		if err != nil {
			return "", usageError{fmt.Errorf("webhook.token_file: %w", err)}
		}
		return strings.TrimSpace(string(b)), nil
	}
	return os.Getenv(c.Webhook.TokenEnv), nil
}
