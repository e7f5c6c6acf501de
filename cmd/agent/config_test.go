package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A typo or a nonsense value in agent.yaml is exit 2 naming the key and the file, before anything runs.
func TestRunConfigIsChecked(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml string
		want []string
	}{
		"unknown key":        {"environment: staging\npolcy_mode: off\n", []string{`line 2: unknown key "polcy_mode"`}},
		"unknown nested key": {"environment: staging\nlease:\n  tll: 10s\n", []string{`line 3: unknown key "lease.tll"`}},
		"unknown trust key": {"environment: staging\ntrust:\n  rules:\n    - pattern: a/*\n      authorites: []\n",
			[]string{`line 5: unknown key "trust.rules[0].authorites"`}},
		"interval":     {"environment: staging\ninterval: 0s\n", []string{"interval: 0s: must be positive"}},
		"jitter":       {"environment: staging\njitter: 1.5\n", []string{"jitter: 1.5: must be at least 0 and below 1"}},
		"lease ttl":    {"environment: staging\nlease: {ttl: 1s}\n", []string{"lease.ttl: 1s: must be at least 3s"}},
		"source":       {"environment: staging\nsource: s3\n", []string{`source: "s3": use gitlab, git or dir`}},
		"policy mode":  {"environment: staging\npolicy_mode: loud\n", []string{"policy_mode:", `"loud"`}},
		"no env":       {"source: dir\ndir: /srv\n", []string{"environment: set it"}},
		"bad duration": {"environment: staging\ninterval: soon\n", []string{"interval"}},
		"history keep": {"environment: staging\nhistory: {keep: 1}\n", []string{"history.keep: 1: must be between 2 and 1000"}},
		"history key":  {"environment: staging\nhistory: {kep: 5}\n", []string{`line 2: unknown key "history.kep"`}},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.yaml")
			writeFile(t, path, tc.yaml)
			r := runOffline(t, "run", "--once", "--config", path, "--listen", "", "--state-dir", t.TempDir())
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			for _, w := range append(tc.want, path) {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

// Every key can come from the file, a SAWMILL_* variable (nested keys too) or a flag, in rising precedence.
func TestRunConfigSources(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, path, "environment: staging\nsource: gitlab\ninterval: 2m\ngitlab: {project: sawmill/platform}\nlease: {ttl: 9s}\nvariables: {DOMAIN: sawmill.test, Mixed_Case: x}\npass_env: [DB_PASSWORD]\n")
	t.Setenv("SAWMILL_GITLAB_URL", "https://gitlab.example")
	t.Setenv("SAWMILL_INTERVAL", "3m")
	cmd := runCmd(newRootViper(), deps{})
	if err := cmd.ParseFlags([]string{"--config", path, "--interval", "4m"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(newRootViper(), cmd)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GitLab.URL != "https://gitlab.example" || cfg.GitLab.Project != "sawmill/platform" || cfg.Interval != 4*time.Minute ||
		cfg.Lease.TTL != 9*time.Second || cfg.Jitter != 0.1 || cfg.GitLab.TokenEnv != "SAWMILL_GITLAB_TOKEN" {
		t.Fatalf("config %+v", cfg)
	}
	// What a release may read: the variables with their names as written, and the passed-through names.
	env := cfg.releaseEnv(func(name string) (string, bool) {
		return map[string]string{"DB_PASSWORD": "pw", "HOME": "/root"}[name], name != "HOME"
	})
	if strings.Join(env, " ") != "DB_PASSWORD=pw DOMAIN=sawmill.test Mixed_Case=x" {
		t.Fatalf("release environment %v", env)
	}
}
