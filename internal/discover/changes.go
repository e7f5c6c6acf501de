package discover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"sort"
	"strings"
)

// Global paths: a change under any of them rebuilds every image.
var globalPaths = []string{"pipegen.yaml", "pipelines"}

// Diff is the set of changed paths between a base revision and HEAD.
type Diff struct {
	All   bool     // rebuild everything (no usable base)
	Why   string   // why All is set
	Base  string   // the base revision used, "" when All
	Paths []string // changed paths, slash separated, relative to the repository root, sorted
	// Force rebuilds these images (and their dependents) whatever changed, with the reason
	// as the value: e.g. an image the base release does not contain.
	Force map[string]string
}

// Decision says whether an image is rebuilt in this pipeline and why.
type Decision struct {
	Image   string
	Rebuild bool
	Reason  string // the changed paths, the dependency, or "unchanged"
}

// Plan decides, for every image of repo (in repo order), whether it is rebuilt: when a path
// in its directory or one of its watch paths changed, when a global path (pipegen.yaml,
// pipelines/) changed, or when an image it depends on is rebuilt (transitively).
func Plan(repo *Repo, d Diff) []Decision {
	out := make([]Decision, 0, len(repo.Images))
	if d.All {
		for _, im := range repo.Images {
			out = append(out, Decision{Image: im.Name, Rebuild: true, Reason: d.Why})
		}
		return out
	}
	var global []string
	for _, p := range d.Paths {
		for _, g := range globalPaths {
			if under(p, g) {
				global = append(global, p)
			}
		}
	}
	if len(global) > 0 {
		why := "changed " + summarize(global)
		for _, im := range repo.Images {
			out = append(out, Decision{Image: im.Name, Rebuild: true, Reason: why})
		}
		return out
	}
	// Paths under images/<name>/ go straight to their image; watch patterns are checked
	// against every path only for images that declare them.
	direct := map[string][]string{}
	for _, p := range d.Paths {
		if rest, ok := strings.CutPrefix(p, ImagesDir+"/"); ok {
			if i := strings.IndexByte(rest, '/'); i > 0 {
				direct[rest[:i]] = append(direct[rest[:i]], p)
			}
		}
	}
	rebuilt := map[string]bool{}
	for _, im := range repo.Images {
		if why, ok := d.Force[im.Name]; ok {
			rebuilt[im.Name] = true
			out = append(out, Decision{Image: im.Name, Rebuild: true, Reason: why})
			continue
		}
		changed := direct[im.Name]
		for _, w := range im.Watch {
			for _, p := range d.Paths {
				if matchWatch(p, w) && !under(p, im.Dir) {
					changed = append(changed, p)
				}
			}
		}
		if len(changed) > 0 {
			sort.Strings(changed)
			rebuilt[im.Name] = true
			out = append(out, Decision{Image: im.Name, Rebuild: true, Reason: "changed " + summarize(changed)})
			continue
		}
		var deps []string
		for _, dep := range im.DependsOn {
			if rebuilt[dep] {
				deps = append(deps, dep)
			}
		}
		if len(deps) > 0 {
			rebuilt[im.Name] = true
			out = append(out, Decision{Image: im.Name, Rebuild: true, Reason: "depends on " + strings.Join(deps, ", ")})
			continue
		}
		out = append(out, Decision{Image: im.Name, Reason: "unchanged"})
	}
	return out
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// matchWatch: a watch entry is a path (the file itself or everything below it) or a glob
// (path.Match syntax) matched against the whole path or one of its parent directories.
func matchWatch(p, w string) bool {
	if under(p, w) {
		return true
	}
	if !strings.ContainsAny(w, "*?[") {
		return false
	}
	for q := p; q != "." && q != "/" && q != ""; q = path.Dir(q) {
		if ok, _ := path.Match(w, q); ok {
			return true
		}
	}
	return false
}

// summarize lists up to three paths and counts the rest.
func summarize(paths []string) string {
	const max = 3
	if len(paths) <= max {
		return strings.Join(paths, ", ")
	}
	return fmt.Sprintf("%s (+%d more)", strings.Join(paths[:max], ", "), len(paths)-max)
}

// ZeroSHA is what GitLab puts in CI_COMMIT_BEFORE_SHA for the first push of a branch.
const ZeroSHA = "0000000000000000000000000000000000000000"

// Git runs the git binary on a repository.
type Git struct {
	Dir string // the repository root (may be a subdirectory of the work tree)
	Bin string // defaults to "git"
}

func (g Git) run(ctx context.Context, args ...string) ([]byte, error) {
	bin := g.Bin
	if bin == "" {
		bin = "git"
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"-C", g.Dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return nil, fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, msg)
		}
		return nil, fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// ErrNotGit is returned when the directory is not inside a git work tree.
var ErrNotGit = errors.New("not a git repository")

// ErrNoBase is returned when the base revision does not exist in the repository.
var ErrNoBase = errors.New("base revision does not exist")

// Check fails with ErrNotGit when Dir is not a git work tree.
func (g Git) Check(ctx context.Context) error {
	out, err := g.run(ctx, "rev-parse", "--is-inside-work-tree")
	if err != nil || strings.TrimSpace(string(out)) != "true" {
		return fmt.Errorf("%s: %w", g.Dir, ErrNotGit)
	}
	return nil
}

// Head returns the commit SHA of HEAD.
func (g Git) Head(ctx context.Context) (string, error) {
	out, err := g.run(ctx, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return "", fmt.Errorf("%s: resolve HEAD: %w", g.Dir, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// HasCommit reports whether rev names a commit of the repository (false for a commit a force
// push left out of the clone, or any other name that does not resolve).
func (g Git) HasCommit(ctx context.Context, rev string) bool {
	if rev == "" || strings.HasPrefix(rev, "-") {
		return false
	}
	_, err := g.run(ctx, "cat-file", "-e", rev+"^{commit}")
	return err == nil
}

// Branch returns the checked-out branch, or "" on a detached HEAD.
func (g Git) Branch(ctx context.Context) string {
	out, err := g.run(ctx, "symbolic-ref", "--quiet", "--short", "HEAD")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// Diff lists the paths changed between base and HEAD. An empty base gives Diff{All: true}
// with why as the reason. It fails with ErrNotGit or ErrNoBase (naming the base). Two git
// processes at most: one rev-parse that checks the work tree and the base, one diff.
func (g Git) Diff(ctx context.Context, base, why string) (Diff, error) {
	if base == "" {
		if err := g.Check(ctx); err != nil {
			return Diff{}, err
		}
		return Diff{All: true, Why: why}, nil
	}
	if strings.HasPrefix(base, "-") {
		if err := g.Check(ctx); err != nil {
			return Diff{}, err
		}
		return Diff{}, fmt.Errorf("base %q: %w", base, ErrNoBase)
	}
	out, err := g.run(ctx, "rev-parse", "--is-inside-work-tree", base+"^{commit}")
	lines := strings.Fields(string(out))
	if err != nil || len(lines) != 2 || lines[0] != "true" {
		if len(lines) > 0 && lines[0] == "true" {
			return Diff{}, fmt.Errorf("base %q in %s: %w (a shallow clone? fetch with GIT_DEPTH: 0)", base, g.Dir, ErrNoBase)
		}
		if cerr := g.Check(ctx); cerr != nil {
			return Diff{}, cerr
		}
		return Diff{}, fmt.Errorf("base %q in %s: %w (a shallow clone? fetch with GIT_DEPTH: 0)", base, g.Dir, ErrNoBase)
	}
	out, err = g.run(ctx, "-c", "core.quotepath=off", "diff", "--name-only", "-z", "--no-renames", "--relative", lines[1], "HEAD", "--")
	if err != nil {
		return Diff{}, fmt.Errorf("%s: diff %s..HEAD: %w", g.Dir, base, err)
	}
	var paths []string
	for p := range strings.SplitSeq(string(out), "\x00") {
		if p != "" {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	return Diff{Base: base, Paths: paths}, nil
}
