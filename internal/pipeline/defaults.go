package pipeline

import (
	"bytes"
	"embed"
	"fmt"
	"text/template"
)

//go:embed defaults/pipelines/*.yml defaults/pipegen.yaml defaults/gitlab-ci.yml
var defaults embed.FS

// InitOptions fill the files `pipegen init` writes.
type InitOptions struct {
	Registry      string // e.g. registry.gitlab.com/group/project
	DefaultBranch string
	Image         string // image of the generate/release jobs
	Command       string // how to run pipegen
	Agent         string // how to run the policy check
	Signing       string // key | keyless
	// SecurityTemplates includes GitLab's SAST, Secret Detection and Dependency Scanning
	// templates in the parent pipeline.
	SecurityTemplates bool
}

// File is one file `pipegen init` writes.
type File struct {
	Path string // relative to the repository root, slash separated
	Data []byte
}

// Template returns the embedded default job template name (e.g. "build.yml").
func Template(name string) ([]byte, error) {
	b, err := defaults.ReadFile("defaults/pipelines/" + name)
	if err != nil {
		return nil, fmt.Errorf("no default template %s: %w", name, err)
	}
	return b, nil
}

// InitFiles returns, in a fixed order, the job templates (under templates dir), pipegen.yaml
// and the parent .gitlab-ci.yml.
func InitFiles(templatesDir string, o InitOptions) ([]File, error) {
	var files []File
	for _, name := range TemplateFiles {
		b, err := Template(name)
		if err != nil {
			return nil, err
		}
		files = append(files, File{Path: templatesDir + "/" + name, Data: b})
	}
	for _, f := range []struct{ src, dst string }{{"pipegen.yaml", "pipegen.yaml"}, {"gitlab-ci.yml", ".gitlab-ci.yml"}} {
		raw, err := defaults.ReadFile("defaults/" + f.src)
		if err != nil {
			return nil, fmt.Errorf("read default %s: %w", f.src, err)
		}
		t, err := template.New(f.src).Option("missingkey=error").Parse(string(raw))
		if err != nil {
			return nil, fmt.Errorf("parse default %s: %w", f.src, err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, o); err != nil {
			return nil, fmt.Errorf("render default %s: %w", f.src, err)
		}
		files = append(files, File{Path: f.dst, Data: b.Bytes()})
	}
	return files, nil
}
