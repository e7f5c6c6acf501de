package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

// The notify targets and the age identity are checked before anything runs: exit 2 naming the key (and
// never a target's URL).
func TestNotifyAndSOPSConfigIsChecked(t *testing.T) {
	dir := t.TempDir()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(dir, "readable.key")
	writeFile(t, readable, id.String()+"\n")
	if err := os.Chmod(readable, 0o644); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(dir, "private.key")
	writeFile(t, private, id.String()+"\n")
	if err := os.Chmod(private, 0o600); err != nil {
		t.Fatal(err)
	}
	urlFile := filepath.Join(dir, "url")
	writeFile(t, urlFile, "ftp://hooks.example/T0/SECRET-PATH\n")
	t.Setenv("SAWMILL_TEST_EMPTY_URL", "")
	for name, tc := range map[string]struct {
		yaml string
		want []string
	}{
		"kind":          {"notify:\n  - {name: ops, kind: pager, url_env: X}\n", []string{`notify[0].kind: "pager": use webhook, slack, mattermost, teams`}},
		"no url":        {"notify:\n  - {name: ops, kind: slack}\n", []string{"notify[0].url_file: give url_file or url_env"}},
		"two urls":      {"notify:\n  - {name: ops, kind: slack, url_env: X, url_file: /x}\n", []string{"notify[0].url_file: give url_file or url_env"}},
		"no name":       {"notify:\n  - {kind: slack, url_env: X}\n", []string{"notify[0].name: missing"}},
		"same name":     {"notify:\n  - {name: a, kind: slack, url_env: X}\n  - {name: a, kind: teams, url_env: Y}\n", []string{`notify[1].name: "a": two targets`}},
		"template":      {"notify:\n  - {name: ops, kind: slack, url_env: X, template: '{{.Nope}}'}\n", []string{"notify[0].template:", "Nope"}},
		"on":            {"notify:\n  - name: ops\n    kind: slack\n    url_env: X\n    on: [failure, sunrise]\n", []string{`notify[0].on: "sunrise": use failure`}},
		"unknown key":   {"notify:\n  - {name: ops, kind: slack, url: https://x}\n", []string{`line 5: unknown key "notify[0].url"`}},
		"empty env":     {"notify:\n  - {name: ops, kind: slack, url_env: SAWMILL_TEST_EMPTY_URL}\n", []string{"notify[0].url_env: $SAWMILL_TEST_EMPTY_URL is empty"}},
		"not http":      {"notify:\n  - {name: ops, kind: slack, url_file: " + urlFile + "}\n", []string{"notify[0] (ops): the URL is not an http(s) URL"}},
		"sops readable": {"sops: {age_key_file: " + readable + "}\n", []string{"sops.age_key_file:", "readable by others (mode 0644)"}},
		"sops missing":  {"sops: {age_key_file: " + filepath.Join(dir, "nope") + "}\n", []string{"sops.age_key_file:", "no such file"}},
		"sops key":      {"sops: {age_kee_file: x}\n", []string{`unknown key "sops.age_kee_file"`}},
		"sops helper":   {"sops: {age_key_file: " + private + ", helper: " + filepath.Join(dir, "no-helper") + "}\n", []string{"sops.helper:", "no such file"}},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.yaml")
			writeFile(t, path, "environment: staging\nsource: dir\ndir: /srv\n"+tc.yaml)
			r := runOffline(t, "run", "--once", "--config", path, "--listen", "", "--state-dir", t.TempDir())
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "SECRET-PATH") || strings.Contains(r.stderr, "AGE-SECRET-KEY") {
				t.Errorf("a secret in the output:\n%s", r.stderr)
			}
		})
	}
}
