// Package cilint checks GitLab CI configuration files.
//
// In: the bytes of a .gitlab-ci.yml (or a generated child pipeline). Out: the list of
// problems found by GitLab's own JSON schema for .gitlab-ci.yml (embedded; the copy at
// ../shared/gitlab/ci.schema.json, see SOURCE.md there) and, when asked, by a GitLab
// server's CI Lint API (POST /projects/:id/ci/lint) through gitlab.com/gitlab-org/api/client-go.
//
// It imports the standard library, go.yaml.in/yaml/v3, santhosh-tekuri/jsonschema/v6 and
// client-go; it is used only by cmd/pipegen (`pipegen lint`) and tests.
package cilint

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	gitlab "gitlab.com/gitlab-org/api/client-go"
	"go.yaml.in/yaml/v3"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

//go:embed ci.schema.json
var schemaJSON []byte

// SchemaJSON returns the embedded GitLab CI JSON schema.
func SchemaJSON() []byte { return bytes.Clone(schemaJSON) }

// SchemaID is the $id of GitLab's CI schema.
const SchemaID = "https://gitlab.com/.gitlab-ci.yml"

// Schema is a compiled CI schema.
type Schema struct{ s *jsonschema.Schema }

var (
	embeddedOnce sync.Once
	embedded     *Schema
	embeddedErr  error
)

// Embedded returns the compiled embedded schema.
func Embedded() (*Schema, error) {
	embeddedOnce.Do(func() { embedded, embeddedErr = Compile(schemaJSON) })
	return embedded, embeddedErr
}

// Compile compiles a GitLab CI JSON schema document.
func Compile(schema []byte) (*Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schema))
	if err != nil {
		return nil, fmt.Errorf("parse CI schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(SchemaID, doc); err != nil {
		return nil, fmt.Errorf("load CI schema: %w", err)
	}
	s, err := c.Compile(SchemaID)
	if err != nil {
		return nil, fmt.Errorf("compile CI schema: %w", err)
	}
	return &Schema{s: s}, nil
}

// ToJSONValue parses YAML into the values encoding/json would produce for the same data
// (map[string]any, []any, string, float64/json.Number, bool, nil), which the schema
// validator expects. Mapping keys must be strings.
func ToJSONValue(yml []byte) (any, error) {
	var v any
	if err := yaml.Unmarshal(yml, &v); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	v, err := normalize(v, "")
	if err != nil {
		return nil, err
	}
	// Round-trip through encoding/json so numbers become json.Number like jsonschema wants.
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("convert YAML to JSON: %w", err)
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

func normalize(v any, path string) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			n, err := normalize(e, path+"."+k)
			if err != nil {
				return nil, err
			}
			x[k] = n
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("%s: mapping key %v is not a string", strings.TrimPrefix(path, "."), k)
			}
			n, err := normalize(e, path+"."+ks)
			if err != nil {
				return nil, err
			}
			m[ks] = n
		}
		return m, nil
	case []any:
		for i, e := range x {
			n, err := normalize(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			x[i] = n
		}
		return x, nil
	}
	return v, nil
}

// Validate checks a CI configuration against the schema. It returns nil when valid, or an
// error listing every violation with its location.
func (s *Schema) Validate(yml []byte) error {
	v, err := ToJSONValue(yml)
	if err != nil {
		return err
	}
	if err := s.s.Validate(v); err != nil {
		var verr *jsonschema.ValidationError
		if errors.As(err, &verr) {
			return &SchemaError{Problems: flatten(verr)}
		}
		return err
	}
	return nil
}

// SchemaError lists schema violations, one per leaf error, sorted.
type SchemaError struct{ Problems []string }

func (e *SchemaError) Error() string {
	return "does not match GitLab's CI schema:\n  " + strings.Join(e.Problems, "\n  ")
}

func flatten(e *jsonschema.ValidationError) []string {
	p := message.NewPrinter(language.English)
	var out []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			out = append(out, "/"+strings.Join(e.InstanceLocation, "/")+": "+e.ErrorKind.LocalizedString(p))
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(e)
	sort.Strings(out)
	return compact(out)
}

func compact(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// Remote is a GitLab server's CI Lint API for one project.
type Remote struct {
	Client  *gitlab.Client
	Project string // numeric ID or full path ("group/project")
	Ref     string // optional: dry-run against this branch or tag
}

// NewRemote makes a Remote talking to baseURL (https://gitlab.example.com) with token.
func NewRemote(baseURL, token, project string) (*Remote, error) {
	if baseURL == "" || token == "" || project == "" {
		return nil, errors.New("GitLab URL, token and project are all required for the CI Lint API")
	}
	c, err := gitlab.NewClient(token, gitlab.WithBaseURL(strings.TrimSuffix(baseURL, "/")+"/api/v4"))
	if err != nil {
		return nil, fmt.Errorf("GitLab client for %s: %w", baseURL, err)
	}
	return &Remote{Client: c, Project: project}, nil
}

// Result is what GitLab said.
type Result struct {
	Valid    bool
	Errors   []string
	Warnings []string
}

// Lint sends content to POST /projects/:id/ci/lint. An HTTP or transport error is an
// error; an invalid configuration is a Result with Valid false.
func (r *Remote) Lint(content []byte) (*Result, error) {
	opt := &gitlab.ProjectNamespaceLintOptions{Content: gitlab.Ptr(string(content))}
	if r.Ref != "" {
		opt.DryRun = gitlab.Ptr(true)
		opt.Ref = gitlab.Ptr(r.Ref)
	}
	res, _, err := r.Client.Validate.ProjectNamespaceLint(r.Project, opt)
	if err != nil {
		return nil, fmt.Errorf("GitLab CI Lint API (project %s): %w", r.Project, err)
	}
	return &Result{Valid: res.Valid, Errors: res.Errors, Warnings: res.Warnings}, nil
}
