package manifest

import (
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func release(stacks string) string {
	return `{"schema_version": 1, "commit": "abc", "images": {"web": {"digest": "` + digest + `", "ref": "r/web:1@` + digest + `"}}, "stacks": ` + stacks + `}`
}

func TestParseRefusesWhatCouldHurtTheReader(t *testing.T) {
	for name, tc := range map[string]struct{ json, want string }{
		"empty environment": {release(`{"shop": {"files": ["stacks/shop/compose.yaml"], "environments": {"production": []}}}`), "stacks.shop.environments.production is empty"},
		"escape":            {release(`{"shop": {"files": ["stacks/../../etc/passwd"]}}`), `file "stacks/../../etc/passwd"`},
		"absolute":          {release(`{"shop": {"files": ["/etc/passwd"]}}`), `file "/etc/passwd"`},
		"no stack":          {release(`{}`), "the release has no stack"},
		"no files":          {release(`{"shop": {"files": []}}`), "stacks.shop.files is empty"},
		"version":           {`{"schema_version": 2}`, "schema_version 2"},
		"digest":            {strings.Replace(release(`{"shop": {"files": ["stacks/shop/c.yaml"]}}`), `"digest": "sha256:0`, `"digest": "sha256:X`, 1), "images.web.digest"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) || fault.KindOf(err) != fault.Invalid {
				t.Fatalf("Parse: %v, want an invalid-input error containing %q", err, tc.want)
			}
		})
	}
	r, err := Parse([]byte(release(`{"shop": {"files": ["stacks/shop/compose.yaml", "stacks/shop/compose.production.yaml"], "environments": {"production": ["stacks/shop/compose.yaml", "stacks/shop/compose.production.yaml"], "staging": ["stacks/shop/compose.yaml"]}}}`)))
	if err != nil {
		t.Fatal(err)
	}
	files, err := r.Files("/rel", "shop", "staging")
	if err != nil || len(files) != 1 || files[0] != "/rel/stacks/shop/compose.yaml" {
		t.Fatalf("files %v %v", files, err)
	}
	if _, err := r.Files("/rel", "shop", "prod"); err == nil || fault.KindOf(err) != fault.Invalid {
		t.Fatalf("an environment the release does not name: %v", err)
	}
}
