// Package discover reads a repository's layout and tells what a delivery pipeline has to do.
//
// In: a repository directory (images/<name>/Dockerfile with an optional image.yaml,
// stacks/<name>/compose.yaml with compose.<env>.yaml overrides, policies/) and, for change
// detection, a git base revision (chosen by the caller: cmd/pipegen takes the commit of the
// last release) and images to rebuild regardless. Out: a [Repo] (images in dependency order,
// stacks, the dependency graph, each image's tests) and a [Decision] per image (rebuilt or
// reused, and why).
//
// It reads files and runs the git binary; it imports only the standard library and
// go.yaml.in/yaml/v3, and nothing else of this module (data flows one way: discover ->
// pipeline -> YAML).
package discover

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Layout directories and files, relative to the repository root.
const (
	ImagesDir   = "images"
	StacksDir   = "stacks"
	PoliciesDir = "policies"
	ImageSpec   = "image.yaml"
	Dockerfile  = "Dockerfile"
	ComposeFile = "compose.yaml"
)

// Image is one images/<name> directory.
type Image struct {
	Name       string     // directory name; also the repository name under the registry
	Dir        string     // "images/<name>" (slash separated, relative to the repository root)
	Dockerfile string     // "images/<name>/Dockerfile"
	Watch      []string   // extra paths whose change rebuilds the image (sorted)
	BuildArgs  []BuildArg // sorted by name
	Target     string     // build target stage, "" for the last one
	Platforms  []string   // e.g. linux/amd64 (sorted); empty means the builder's default
	DependsOn  []string   // repository images this one builds on (sorted, direct only)
	// Context is the build context, relative to the repository root: image.yaml's `context` (e.g. "." for
	// an image that builds from the module root), else Dir.
	Context string
	// Test are shell commands run inside the built image (image.yaml `test`); they gate signing.
	Test []string
}

// BuildArg is one --build-arg of an image.
type BuildArg struct{ Name, Value string }

// Stack is one stacks/<name> directory.
type Stack struct {
	Name      string
	Dir       string     // "stacks/<name>"
	File      string     // "stacks/<name>/compose.yaml"
	Overrides []Override // sorted by environment
}

// Override is a stacks/<name>/compose.<env>.yaml file.
type Override struct{ Env, File string }

// Repo is everything discovered in a repository.
type Repo struct {
	Images   []Image // topological order: every image after the images it depends on; ties by name
	Stacks   []Stack // sorted by name
	Policies bool    // policies/ exists
}

// Image returns the image called name.
func (r *Repo) Image(name string) (Image, bool) {
	for _, im := range r.Images {
		if im.Name == name {
			return im, true
		}
	}
	return Image{}, false
}

// Options tune discovery.
type Options struct {
	// Registries are the prefixes that, in a FROM line, stand for this repository's registry
	// path, in addition to the built-in ${REGISTRY}, $REGISTRY, ${SAWMILL_REGISTRY},
	// $SAWMILL_REGISTRY, ${CI_REGISTRY_IMAGE} and $CI_REGISTRY_IMAGE.
	Registries []string
}

// builtinRegistries are the FROM prefixes that always mean "this repository's registry".
var builtinRegistries = []string{"${REGISTRY}", "$REGISTRY", "${SAWMILL_REGISTRY}", "$SAWMILL_REGISTRY", "${CI_REGISTRY_IMAGE}", "$CI_REGISTRY_IMAGE"}

// nameRE is a repository path component as the OCI distribution spec allows it.
var nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

// envRE is an environment name as used in compose.<env>.yaml.
var envRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// imageSpec is the schema of images/<name>/image.yaml.
type imageSpec struct {
	Watch     []string          `yaml:"watch"`
	BuildArgs map[string]string `yaml:"build_args"`
	Target    string            `yaml:"target"`
	Platforms []string          `yaml:"platforms"`
	DependsOn []string          `yaml:"depends_on"`
	Context   string            `yaml:"context"`
	Test      []string          `yaml:"test"`
}

// Scan reads the repository at root.
func Scan(root string, opts Options) (*Repo, error) {
	repo := &Repo{}
	images, err := scanImages(root, opts)
	if err != nil {
		return nil, err
	}
	if repo.Images, err = order(images); err != nil {
		return nil, err
	}
	if repo.Stacks, err = scanStacks(root); err != nil {
		return nil, err
	}
	if st, err := os.Stat(filepath.Join(root, PoliciesDir)); err == nil && st.IsDir() {
		repo.Policies = true
	}
	return repo, nil
}

func subdirs(root, dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

func scanImages(root string, opts Options) (map[string]*Image, error) {
	names, err := subdirs(root, ImagesDir)
	if err != nil {
		return nil, err
	}
	images := make(map[string]*Image, len(names))
	froms := make(map[string][]string, len(names))
	byVar := make(map[string]string, len(names))
	for _, name := range names {
		dir := ImagesDir + "/" + name
		if !nameRE.MatchString(name) {
			return nil, fmt.Errorf("%s: %q is not a valid image name (lowercase letters, digits, '.', '_', '-')", dir, name)
		}
		if other, ok := byVar[VarName(name)]; ok {
			return nil, fmt.Errorf("%s: image names %q and %q both map to the variable prefix %s; rename one", dir, other, name, VarName(name))
		}
		byVar[VarName(name)] = name
	}
	// Read the images' files in parallel (I/O bound); results and the first error are
	// taken in name order, so the outcome does not depend on scheduling.
	results := make([]imageResult, len(names))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(len(names), 4*runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			for i := range next {
				results[i] = readImage(root, names[i])
			}
		})
	}
	for i := range names {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, name := range names {
		if results[i].err != nil {
			return nil, results[i].err
		}
		images[name] = results[i].im
		froms[name] = results[i].froms
	}
	prefixes := append(slices.Clone(builtinRegistries), opts.Registries...)
	for _, name := range names {
		im := images[name]
		deps := map[string]bool{}
		for _, d := range im.DependsOn {
			if _, ok := images[d]; !ok {
				return nil, fmt.Errorf("%s/%s: depends_on: no image %q in %s/", im.Dir, ImageSpec, d, ImagesDir)
			}
			deps[d] = true
		}
		for _, ref := range froms[name] {
			if d, ok := repoImage(ref, prefixes, images, byVar); ok {
				deps[d] = true
			}
		}
		im.DependsOn = nil
		if len(deps) > 0 {
			im.DependsOn = slices.Sorted(maps.Keys(deps))
		}
	}
	return images, nil
}

// imageResult is what readImage found for one image.
type imageResult struct {
	im    *Image
	froms []string // FROM references of the Dockerfile
	err   error
}

func readImage(root, name string) (r imageResult) {
	dir := ImagesDir + "/" + name
	im := &Image{Name: name, Dir: dir, Dockerfile: dir + "/" + Dockerfile, Context: dir}
	df, err := readFile(filepath.Join(root, filepath.FromSlash(im.Dockerfile)))
	if errors.Is(err, fs.ErrNotExist) {
		r.err = fmt.Errorf("%s: image directory has no Dockerfile", dir)
		return r
	}
	if err != nil {
		r.err = fmt.Errorf("read %s: %w", im.Dockerfile, err)
		return r
	}
	if err := readSpec(root, im); err != nil {
		r.err = err
		return r
	}
	r.im, r.froms = im, FromImages(df)
	return r
}

func readSpec(root string, im *Image) error {
	file := im.Dir + "/" + ImageSpec
	b, err := readFile(filepath.Join(root, filepath.FromSlash(file)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	var spec imageSpec
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&spec); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: %w", file, err)
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: more than one YAML document", file)
	}
	for _, w := range spec.Watch {
		w = strings.TrimSuffix(path.Clean(strings.TrimPrefix(w, "./")), "/")
		if w == "." || w == "" || w == ".." || strings.HasPrefix(w, "../") || path.IsAbs(w) {
			return fmt.Errorf("%s: watch: %q must be a path inside the repository", file, w)
		}
		if _, err := path.Match(w, ""); err != nil {
			return fmt.Errorf("%s: watch: %q: %w", file, w, err)
		}
		im.Watch = append(im.Watch, w)
	}
	sort.Strings(im.Watch)
	im.Watch = slices.Compact(im.Watch)
	for _, k := range slices.Sorted(maps.Keys(spec.BuildArgs)) {
		im.BuildArgs = append(im.BuildArgs, BuildArg{Name: k, Value: spec.BuildArgs[k]})
	}
	if spec.Context != "" {
		c := path.Clean(strings.TrimPrefix(spec.Context, "./"))
		if strings.HasPrefix(c, "../") || c == ".." || path.IsAbs(c) {
			return fmt.Errorf("%s: context: %q must be a directory inside the repository", file, spec.Context)
		}
		im.Context = c
	}
	for i, c := range spec.Test {
		if strings.TrimSpace(c) == "" {
			return fmt.Errorf("%s: test[%d]: empty command", file, i)
		}
	}
	im.Test = spec.Test
	im.Target = spec.Target
	im.Platforms = slices.Compact(slices.Sorted(slices.Values(spec.Platforms)))
	for _, d := range spec.DependsOn {
		if d == im.Name {
			return fmt.Errorf("%s: depends_on: image %q depends on itself", file, d)
		}
	}
	im.DependsOn = spec.DependsOn
	return nil
}

// FromImages returns the image references of a Dockerfile's FROM instructions, in order,
// without --platform flags and "AS <stage>" suffixes, and without references to earlier
// build stages. Line continuations are joined; comments are skipped.
func FromImages(dockerfile []byte) []string {
	var refs []string
	var stages map[string]bool
	var line strings.Builder
	for raw := range bytes.Lines(dockerfile) {
		t := strings.TrimSpace(string(raw))
		if line.Len() == 0 && strings.HasPrefix(t, "#") {
			continue
		}
		if strings.HasSuffix(t, "\\") {
			line.WriteString(strings.TrimSuffix(t, "\\"))
			line.WriteByte(' ')
			continue
		}
		full := t
		if line.Len() > 0 {
			line.WriteString(t)
			full = line.String()
			line.Reset()
		}
		if len(full) < 5 || !strings.EqualFold(full[:4], "FROM") || (full[4] != ' ' && full[4] != '\t') {
			continue
		}
		args := strings.Fields(full)[1:]
		for len(args) > 0 && strings.HasPrefix(args[0], "--") {
			args = args[1:]
		}
		if len(args) == 0 {
			continue
		}
		ref := args[0]
		if !stages[strings.ToLower(ref)] {
			refs = append(refs, ref)
		}
		if len(args) >= 3 && strings.EqualFold(args[1], "AS") {
			if stages == nil {
				stages = map[string]bool{}
			}
			stages[strings.ToLower(args[2])] = true
		}
	}
	return refs
}

// repoImage tells whether the FROM reference ref names an image of this repository: by
// MatchImage's rule, or as the build argument the pipeline passes for it, ${<VAR>_IMAGE} or
// $<VAR>_IMAGE with <VAR> = VarName(image); byVar maps <VAR> to the image name.
func repoImage(ref string, prefixes []string, images map[string]*Image, byVar map[string]string) (string, bool) {
	if arg, ok := strings.CutPrefix(ref, "$"); ok {
		if inner, ok := strings.CutPrefix(arg, "{"); ok {
			arg, _ = strings.CutSuffix(inner, "}")
		}
		if v, ok := strings.CutSuffix(arg, "_IMAGE"); ok {
			if name, ok := byVar[v]; ok {
				return name, true
			}
		}
	}
	return matchImage(ref, prefixes, func(n string) bool { _, ok := images[n]; return ok })
}

// VarName is the variable prefix of an image: upper case, every character that is not a
// letter or digit replaced by '_' ("go_ingest" -> "GO_INGEST"). The pipeline exports
// <VAR>_DIGEST and passes the build argument <VAR>_IMAGE.
func VarName(image string) string {
	var b strings.Builder
	for _, r := range image {
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// MatchImage tells whether the image reference ref names an image of this repository: it
// must start with one of the built-in registry placeholders (${REGISTRY}, $REGISTRY,
// ${SAWMILL_REGISTRY}, $SAWMILL_REGISTRY, ${CI_REGISTRY_IMAGE}, $CI_REGISTRY_IMAGE) or one
// of registries, then "/", then exactly an image name (isImage), then nothing, a ":tag" or
// an "@digest". Anything else (docker.io/library/python, a bare "base") is an outside image.
func MatchImage(ref string, registries []string, isImage func(string) bool) (string, bool) {
	return matchImage(ref, append(slices.Clone(builtinRegistries), registries...), isImage)
}

func matchImage(ref string, prefixes []string, isImage func(string) bool) (string, bool) {
	for _, p := range prefixes {
		p = strings.TrimSuffix(p, "/")
		if p == "" || !strings.HasPrefix(ref, p+"/") {
			continue
		}
		rest := ref[len(p)+1:]
		if i := strings.IndexAny(rest, ":@"); i >= 0 {
			rest = rest[:i]
		}
		if isImage(rest) {
			return rest, true
		}
	}
	return "", false
}

// order sorts images topologically (dependencies first, ties by name) and rejects cycles,
// naming the cycle.
func order(images map[string]*Image) ([]Image, error) {
	names := slices.Sorted(maps.Keys(images))
	const (
		unvisited = iota
		visiting
		done
	)
	state := make(map[string]int, len(images))
	out := make([]Image, 0, len(images))
	var stack []string
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case done:
			return nil
		case visiting:
			i := slices.Index(stack, n)
			cycle := append(slices.Clone(stack[i:]), n)
			return fmt.Errorf("%s/%s: dependency cycle: %s", ImagesDir, n, strings.Join(cycle, " -> "))
		}
		state[n] = visiting
		stack = append(stack, n)
		for _, d := range images[n].DependsOn {
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		out = append(out, *images[n])
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func scanStacks(root string) ([]Stack, error) {
	names, err := subdirs(root, StacksDir)
	if err != nil {
		return nil, err
	}
	stacks := make([]Stack, 0, len(names))
	for _, name := range names {
		dir := StacksDir + "/" + name
		if !nameRE.MatchString(name) {
			return nil, fmt.Errorf("%s: %q is not a valid stack name", dir, name)
		}
		st := Stack{Name: name, Dir: dir, File: dir + "/" + ComposeFile}
		entries, err := os.ReadDir(filepath.Join(root, filepath.FromSlash(dir)))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", dir, err)
		}
		found := false
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() {
				continue
			}
			if n == ComposeFile {
				found = true
				continue
			}
			if env, ok := strings.CutPrefix(n, "compose."); ok {
				if env, ok = strings.CutSuffix(env, ".yaml"); ok {
					if !envRE.MatchString(env) {
						return nil, fmt.Errorf("%s/%s: %q is not a valid environment name", dir, n, env)
					}
					st.Overrides = append(st.Overrides, Override{Env: env, File: dir + "/" + n})
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: stack directory has no %s", dir, ComposeFile)
		}
		sort.Slice(st.Overrides, func(i, j int) bool { return st.Overrides[i].Env < st.Overrides[j].Env })
		stacks = append(stacks, st)
	}
	return stacks, nil
}
