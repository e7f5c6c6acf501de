package cilint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sharedSchema(t *testing.T) []byte {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		if filepath.Dir(dir) == dir {
			t.Fatal("no go.mod")
		}
		dir = filepath.Dir(dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "..", "shared", "gitlab", "ci.schema.json"))
	if err != nil {
		t.Fatalf("GitLab CI schema: %v", err)
	}
	return b
}

// The embedded copy is ../shared/gitlab/ci.schema.json, byte for byte.
func TestEmbeddedSchemaIsShared(t *testing.T) {
	if !bytes.Equal(SchemaJSON(), sharedSchema(t)) {
		t.Fatal("internal/cilint/ci.schema.json differs from ../shared/gitlab/ci.schema.json: copy it again")
	}
}

func TestValidate(t *testing.T) {
	s, err := Embedded()
	if err != nil {
		t.Fatal(err)
	}
	valid := "stages: [build]\nbuild:\n  stage: build\n  script: [make]\n  needs: []\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\"\n      when: manual\n"
	if err := s.Validate([]byte(valid)); err != nil {
		t.Errorf("valid file rejected: %v", err)
	}
	err = s.Validate([]byte("build:\n  script: [make]\n  when: sometimes\n  artifact: {}\n"))
	var se *SchemaError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "/build") {
		t.Errorf("error does not name the job: %v", err)
	}
	if err := s.Validate([]byte("a: [\n")); err == nil || !strings.Contains(err.Error(), "parse YAML") {
		t.Errorf("broken YAML: %v", err)
	}
	if err := s.Validate([]byte("? [a]\n: 1\n")); err == nil {
		t.Error("non-string key accepted")
	}
}
