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
	// SignIn is where images are signed: child (default) or parent (signing.pipeline).
	SignIn string
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

// ComponentPath is where this repository ships the job templates as a GitLab CI/CD component
// (`include: component: <host>/<project>/sawmill-jobs@<version>`).
const ComponentPath = "templates/sawmill-jobs.yml"

// componentInputs are the component's typed spec:inputs: the job images the templates pin,
// replaced in the template text by `$[[ inputs.<name> ]]`.
var componentInputs = []struct{ name, description, image string }{
	{"trivy_image", "image of the scan jobs (trivy, with /contrib/gitlab.tpl)", "aquasec/trivy:0.67.2"},
	{"cosign_image", "image of the sign jobs (cosign v3 and a POSIX shell)", "ghcr.io/sigstore/cosign/cosign:v3.1.3-dev"},
	{"oras_image", "image of the sbom jobs (ORAS and a POSIX shell; signing.pipeline parent)", "ghcr.io/oras-project/oras:v1.3.0"},
}

// Component returns the CI/CD component file: a spec:inputs header, then the job templates
// (TemplateFiles, in order) with the images that are inputs replaced by interpolation.
func Component() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# GitLab CI/CD component: the job templates of pipegen's child pipelines (generated from\n")
	b.WriteString("# internal/pipeline/defaults/pipelines by pipegen; do not edit). Use it with pipegen.yaml\n")
	b.WriteString("# `component: <host>/<project>/sawmill-jobs@<version>` instead of copying pipelines/.\n")
	b.WriteString("spec:\n  inputs:\n")
	for _, in := range componentInputs {
		fmt.Fprintf(&b, "    %s:\n      type: string\n      default: %q\n      description: %q\n", in.name, in.image, in.description)
	}
	b.WriteString("---\n")
	for i, name := range TemplateFiles {
		t, err := Template(name)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.Write(t)
	}
	out := b.Bytes()
	for _, in := range componentInputs {
		// The image, as a job's image name or as the default of the variable that names it.
		old := []byte(": " + in.image + "\n")
		if !bytes.Contains(out, old) {
			return nil, fmt.Errorf("component: no image %s in the templates", in.image)
		}
		out = bytes.ReplaceAll(out, old, []byte(": $[[ inputs."+in.name+" ]]\n"))
	}
	return out, nil
}
