package compose

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/template"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/fault"
)

// Limits on what a confined load reads (Options.Root): each file, and all of them together.
const (
	DefaultMaxFileBytes  = 4 << 20
	DefaultMaxTotalBytes = 32 << 20
)

// confinement checks, before compose-go reads anything, that every file a release's compose files name
// stays inside the release directory: the compose files themselves, `include`, `extends.file`, `env_file`,
// `label_file`, and the `file` of secrets and configs, in every file reached through include and extends.
// Symbolic links are followed and must resolve inside the directory too; only regular files are read, each
// within the size limit, and all of them together within the total limit.
type confinement struct {
	root     string // the release directory, symlinks resolved
	env      map[string]string
	maxFile  int64
	maxTotal int64
	total    int64
	seen     map[string]bool
}

func newConfinement(o Options) (*confinement, error) {
	root, err := filepath.EvalSymlinks(o.Root)
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("release directory: %w", err))
	}
	root, err = filepath.Abs(root)
	if err != nil {
		return nil, fault.InvalidErr(err)
	}
	c := &confinement{root: root, env: map[string]string{}, maxFile: o.MaxFileBytes, maxTotal: o.MaxTotalBytes, seen: map[string]bool{}}
	if c.maxFile <= 0 {
		c.maxFile = DefaultMaxFileBytes
	}
	if c.maxTotal <= 0 {
		c.maxTotal = DefaultMaxTotalBytes
	}
	for _, kv := range o.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			c.env[k] = v
		}
	}
	return c, nil
}

// errOutside is wrapped by every refusal of a path outside the release.
var errOutside = errors.New("outside the release directory")

// check resolves path (relative to dir when relative), and refuses it unless it stays inside the release,
// is a regular file (when it exists) and fits the limits. It returns the resolved path.
func (c *confinement) check(where, path, dir string, mustExist bool) (string, error) {
	if path == "" {
		return "", nil
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	path = filepath.Clean(path)
	if !c.inside(path) {
		return "", fault.InvalidErr(fmt.Errorf("%s: %s is %w", where, path, errOutside))
	}
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, os.ErrNotExist) && !mustExist {
		return path, nil
	}
	if err != nil {
		return "", fault.InvalidErr(fmt.Errorf("%s: %w", where, err))
	}
	if !c.inside(real) {
		return "", fault.InvalidErr(fmt.Errorf("%s: %s is a link to %s, %w", where, path, real, errOutside))
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fault.InvalidErr(fmt.Errorf("%s: %w", where, err))
	}
	if fi.IsDir() {
		return real, nil
	}
	if !fi.Mode().IsRegular() {
		return "", fault.InvalidErr(fmt.Errorf("%s: %s is not a regular file", where, path))
	}
	if fi.Size() > c.maxFile {
		return "", fault.InvalidErr(fmt.Errorf("%s: %s is %d bytes, more than the limit of %d per file", where, path, fi.Size(), c.maxFile))
	}
	if !c.seen[real] {
		c.seen[real] = true
		c.total += fi.Size()
		if c.total > c.maxTotal {
			return "", fault.InvalidErr(fmt.Errorf("%s: the release's files are more than the limit of %d bytes together", where, c.maxTotal))
		}
	}
	return real, nil
}

func (c *confinement) inside(p string) bool {
	rel, err := filepath.Rel(c.root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// files checks the compose files and everything they name, recursively.
func (c *confinement) files(files []string, workDir string) error {
	if _, err := c.check("working directory", workDir, workDir, true); err != nil {
		return err
	}
	for _, f := range files {
		if err := c.file(f, workDir); err != nil {
			return err
		}
	}
	return nil
}

func (c *confinement) file(f, workDir string) error {
	real, err := c.check("compose file", f, workDir, true)
	if err != nil {
		return err
	}
	if c.seen[real+"#scanned"] {
		return nil
	}
	c.seen[real+"#scanned"] = true
	b, err := os.ReadFile(real)
	if err != nil {
		return fault.InvalidErr(fmt.Errorf("compose file %s: %w", f, err))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil || len(doc.Content) == 0 {
		return nil // compose-go reports the syntax error with its position
	}
	root := doc.Content[0]
	dir := filepath.Dir(f)
	name := rel(f)
	// A relative path is resolved against the file's directory by some keys and the working directory by
	// others: both must stay inside.
	path := func(n *yaml.Node, where string) (string, error) {
		if n == nil || n.Kind != yaml.ScalarNode {
			return "", nil
		}
		v, err := template.Substitute(n.Value, func(k string) (string, bool) { v, ok := c.env[k]; return v, ok })
		if err != nil {
			v = n.Value
		}
		w := fmt.Sprintf("%s:%d: %s", name, n.Line, where)
		if _, err := c.check(w, v, workDir, false); err != nil {
			return "", err
		}
		return c.check(w, v, dir, false)
	}
	each := func(n *yaml.Node, fn func(*yaml.Node) error) error {
		if n == nil {
			return nil
		}
		if n.Kind == yaml.SequenceNode {
			for _, item := range n.Content {
				if err := fn(item); err != nil {
					return err
				}
			}
			return nil
		}
		return fn(n)
	}
	// include: a path, a list of paths, or long syntax {path, env_file, project_directory}.
	if err := each(value(root, "include"), func(item *yaml.Node) error {
		if item.Kind == yaml.MappingNode {
			if err := each(value(item, "env_file"), func(n *yaml.Node) error { _, err := path(n, "include.env_file"); return err }); err != nil {
				return err
			}
			if _, err := path(value(item, "project_directory"), "include.project_directory"); err != nil {
				return err
			}
			return each(value(item, "path"), func(n *yaml.Node) error { return c.included(path(n, "include.path")) })
		}
		return c.included(path(item, "include"))
	}); err != nil {
		return err
	}
	for _, svc := range mappingValues(value(root, "services")) {
		if ext := value(svc, "extends"); ext != nil && ext.Kind == yaml.MappingNode {
			if err := c.included(path(value(ext, "file"), "extends.file")); err != nil {
				return err
			}
		}
		for _, key := range []string{"env_file", "label_file"} {
			if err := each(value(svc, key), func(n *yaml.Node) error {
				if n.Kind == yaml.MappingNode {
					n = value(n, "path")
				}
				_, err := path(n, key)
				return err
			}); err != nil {
				return err
			}
		}
	}
	for _, kind := range []string{"secrets", "configs"} {
		for _, obj := range mappingValues(value(root, kind)) {
			if _, err := path(value(obj, "file"), kind+".file"); err != nil {
				return err
			}
		}
	}
	return nil
}

// included scans a file reached through include or extends.
func (c *confinement) included(p string, err error) error {
	if err != nil || p == "" {
		return err
	}
	if fi, statErr := os.Stat(p); statErr != nil || fi.IsDir() {
		return nil // compose-go reports a missing file
	}
	return c.file(p, filepath.Dir(p))
}

func value(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func mappingValues(m *yaml.Node) []*yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	var out []*yaml.Node
	for i := 1; i < len(m.Content); i += 2 {
		out = append(out, m.Content[i])
	}
	return out
}

// readFile reads a secret's or config's file: under a confined load through an os.Root of the release
// directory (no escape through links), with the size limit.
func (c *confinement) readFile(path string) ([]byte, error) {
	if c == nil {
		return os.ReadFile(path)
	}
	real, err := c.check("file", path, c.root, true)
	if err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(c.root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	rel, err := filepath.Rel(c.root, real)
	if err != nil {
		return nil, err
	}
	return r.ReadFile(rel)
}
