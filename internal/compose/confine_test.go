package compose

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
)

// A release's compose files are untrusted: nothing they name may be read from outside the release.
func TestConfinedLoadRefusesFilesOutsideTheRelease(t *testing.T) {
	outside := t.TempDir()
	secretOutside := filepath.Join(outside, "host-secret")
	if err := os.WriteFile(secretOutside, []byte("host file content"), 0o600); err != nil {
		t.Fatal(err)
	}
	service := "services:\n  web:\n    image: r/web:1\n"
	for name, tc := range map[string]struct {
		compose string
		files   map[string]string // more files in the release
		link    string            // a link at release/link pointing here
		env     []string
		want    string
	}{
		"secret ../":           {compose: service + "secrets:\n  s:\n    file: ../../../../../../etc/passwd\n", want: "outside the release directory"},
		"secret absolute":      {compose: service + "secrets:\n  s:\n    file: " + secretOutside + "\n", want: "outside the release directory"},
		"secret dev zero":      {compose: service + "secrets:\n  s:\n    file: /dev/zero\n", want: "outside the release directory"},
		"config via link":      {compose: service + "configs:\n  c:\n    file: ./link\n", link: secretOutside, want: "is a link to"},
		"secret interpolated":  {compose: service + "secrets:\n  s:\n    file: ${WHERE}\n", env: []string{"WHERE=" + secretOutside}, want: "outside the release directory"},
		"env_file":             {compose: "services:\n  web:\n    image: r/web:1\n    env_file: ../../../../etc/environment\n", want: "env_file"},
		"env_file long syntax": {compose: "services:\n  web:\n    image: r/web:1\n    env_file:\n      - path: " + secretOutside + "\n", want: "outside the release directory"},
		"include":              {compose: "include:\n  - " + filepath.Join(outside, "other.yaml") + "\n" + service, want: "include"},
		"include long syntax":  {compose: "include:\n  - path: ./sub.yaml\n    env_file: " + secretOutside + "\n" + service, files: map[string]string{"sub.yaml": service}, want: "include.env_file"},
		"extends":              {compose: "services:\n  web:\n    extends: {file: " + filepath.Join(outside, "base.yaml") + ", service: base}\n", want: "extends.file"},
		"nested include":       {compose: "include: [./sub.yaml]\n", files: map[string]string{"sub.yaml": service + "secrets:\n  s:\n    file: " + secretOutside + "\n"}, want: "sub.yaml"},
		"dot env link":         {compose: service, link: secretOutside, files: map[string]string{}, want: ""},
		"too big":              {compose: service + "configs:\n  c:\n    file: ./big\n", files: map[string]string{"big": strings.Repeat("x", 2048)}, want: "more than the limit"},
	} {
		t.Run(name, func(t *testing.T) {
			release := t.TempDir()
			for f, content := range tc.files {
				if err := os.WriteFile(filepath.Join(release, f), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.link != "" {
				link := "link"
				if name == "dot env link" {
					link = ".env"
					tc.want = ".env"
				}
				if err := os.Symlink(tc.link, filepath.Join(release, link)); err != nil {
					t.Fatal(err)
				}
			}
			file := filepath.Join(release, "compose.yaml")
			if err := os.WriteFile(file, []byte(tc.compose), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(context.Background(), Options{Files: []string{file}, Stack: "shop", Env: tc.env, Root: release, MaxFileBytes: 1024, Strict: true})
			if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load: %v, want an invalid-input error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "host file content") {
				t.Fatalf("the error quotes the file: %v", err)
			}
		})
	}
}

func TestConfinedLoadReadsTheRelease(t *testing.T) {
	release := t.TempDir()
	if err := os.MkdirAll(filepath.Join(release, "stacks", "shop"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(release, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stacks/shop/app.conf", "listen 8080;")
	write("stacks/shop/web.env", "MODE=prod\n")
	if err := os.Symlink("app.conf", filepath.Join(release, "stacks/shop/link.conf")); err != nil {
		t.Fatal(err)
	}
	write("stacks/shop/compose.yaml", `services:
  web:
    image: r/web:${TAG:-1}
    env_file: web.env
    configs: [app, linked]
configs:
  app:
    file: ./app.conf
  linked:
    file: ./link.conf
`)
	st, err := Load(context.Background(), Options{Files: []string{filepath.Join(release, "stacks/shop/compose.yaml")}, Stack: "shop", Root: release, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Configs) != 2 || string(st.Configs[0].Data) != "listen 8080;" || string(st.Configs[1].Data) != "listen 8080;" {
		t.Fatalf("configs %+v", st.Configs)
	}
}

func TestStrictVariables(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	load := func(compose string, env ...string) error {
		if err := os.WriteFile(file, []byte(compose), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(context.Background(), Options{Files: []string{file}, Stack: "shop", Env: env, Strict: true})
		return err
	}
	for _, ref := range []string{"${SAWMILL_GITLAB_TOKEN}", "$SAWMILL_GITLAB_TOKEN", "x-${SAWMILL_GITLAB_TOKEN}-y"} {
		err := load("services:\n  web:\n    image: r/web:1\n    environment:\n      T: \"" + ref + "\"\n")
		if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "variable SAWMILL_GITLAB_TOKEN is not set") {
			t.Errorf("%s: %v, want an error naming the variable", ref, err)
		}
	}
	if err := load("services:\n  web:\n    image: r/web:${TAG:-1}\n    environment:\n      A: ${A-x}\n      B: $${LITERAL}\n      C: ${C}\n", "C=ok"); err != nil {
		t.Errorf("defaults, escapes and known variables: %v", err)
	}
	err := load("services:\n  web:\n    image: r/web:1\nsecrets:\n  t:\n    environment: SAWMILL_GITLAB_TOKEN\n")
	if err == nil || !strings.Contains(err.Error(), "SAWMILL_GITLAB_TOKEN is not set") {
		t.Errorf("a secret from a variable the release may not read: %v", err)
	}
}
