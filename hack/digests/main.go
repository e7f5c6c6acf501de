// Command digests checks the digest-pinned image references of the repository against their registries. It
// is meant to run where the registries are reachable (`make check-digests`); nothing else runs it.
//
// It reads every services.*.image with "@sha256:" in the compose files under stacks/, and every ARG default
// and FROM image with "@sha256:" in the Dockerfiles under images/ (references holding a variable are left
// out). For each reference it asks the registry (default keychain) whether the digest exists, and, when the
// reference names a tag too, where that tag points now. It prints one line per reference, sorted:
//
//	ok      postgres:16.4@sha256:...
//	moved   nginx:1.27-alpine@sha256:... (tag now at sha256:...)
//	missing apache/kafka:3.8.0@sha256:...
//	error   metabase/metabase:v0.63.18@sha256:... <the error>
//
// It exits 1 when a digest is missing or a check failed, and 2 when the files cannot be read. A moved tag is
// only a note (the pin is there so that a moved tag does not matter) unless -strict is given.
//
//	go run ./hack/digests [-repo DIR] [-timeout 2m] [-strict]
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.yaml.in/yaml/v3"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("digests", flag.ContinueOnError)
	fl.SetOutput(stderr)
	repo := fl.String("repo", ".", "repository root")
	timeout := fl.Duration("timeout", 2*time.Minute, "time limit for all registry requests")
	strict := fl.Bool("strict", false, "a moved tag fails too")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	refs, err := pinnedRefs(*repo)
	if err != nil {
		fmt.Fprintln(stderr, "digests:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	code := 0
	for _, ref := range refs {
		status, note := check(ref, opts)
		fmt.Fprintf(stdout, "%-8s%s%s\n", status, ref, note)
		if status == "missing" || status == "error" || (status == "moved" && *strict) {
			code = 1
		}
	}
	return code
}

// check returns the status of one reference (ok, moved, missing, error) and a note for the line.
func check(ref string, opts []remote.Option) (status, note string) {
	base, digest, _ := strings.Cut(ref, "@")
	d, err := name.NewDigest(ref)
	if err != nil {
		return "error", " " + err.Error()
	}
	if _, err := remote.Head(d, opts...); err != nil {
		if notFound(err) {
			return "missing", ""
		}
		// Some registries answer HEAD badly: ask with GET before calling it an error.
		if _, err = remote.Get(d, opts...); notFound(err) {
			return "missing", ""
		} else if err != nil {
			return "error", " " + err.Error()
		}
	}
	tag, err := name.NewTag(base)
	if err != nil || !strings.HasSuffix(base, ":"+tag.TagStr()) {
		return "ok", "" // no tag in the reference (repo@digest): nothing moves
	}
	desc, err := remote.Head(tag, opts...)
	switch {
	case notFound(err):
		return "moved", " (tag not found)"
	case err != nil:
		return "error", " tag: " + err.Error()
	case desc.Digest.String() != digest:
		return "moved", " (tag now at " + desc.Digest.String() + ")"
	}
	return "ok", ""
}

func notFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}

// pinnedRefs returns the digest-pinned references of the compose files under stacks/ and the Dockerfiles
// under images/, sorted and without duplicates.
func pinnedRefs(repo string) ([]string, error) {
	var refs []string
	add := func(ref string) {
		ref = strings.Trim(ref, `"'`)
		if strings.Contains(ref, "@sha256:") && !strings.Contains(ref, "$") {
			refs = append(refs, ref)
		}
	}
	walk := func(dir string, match func(string) bool, read func([]byte) error) error {
		err := filepath.WalkDir(filepath.Join(repo, dir), func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || !match(e.Name()) {
				return err
			}
			raw, err := os.ReadFile(path)
			if err == nil {
				err = read(raw)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			return nil
		})
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	isCompose := func(n string) bool {
		n = strings.TrimPrefix(n, "docker-")
		return strings.HasPrefix(n, "compose") && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml"))
	}
	isDockerfile := func(n string) bool {
		return n == "Dockerfile" || strings.HasPrefix(n, "Dockerfile.") || strings.HasSuffix(n, ".Dockerfile")
	}
	err := walk("stacks", isCompose, func(raw []byte) error {
		var f struct {
			Services map[string]struct{ Image string }
		}
		if err := yaml.Unmarshal(raw, &f); err != nil {
			return err
		}
		for _, s := range f.Services {
			add(s.Image)
		}
		return nil
	})
	if err == nil {
		err = walk("images", isDockerfile, func(raw []byte) error {
			for _, line := range dockerfileLines(raw) {
				fields := strings.Fields(line)
				if len(fields) < 2 {
					continue
				}
				switch strings.ToUpper(fields[0]) {
				case "ARG":
					for _, f := range fields[1:] {
						if _, v, ok := strings.Cut(f, "="); ok {
							add(v)
						}
					}
				case "FROM":
					for _, f := range fields[1:] {
						if !strings.HasPrefix(f, "--") {
							add(f)
							break
						}
					}
				}
			}
			return nil
		})
	}
	slices.Sort(refs)
	return slices.Compact(refs), err
}

// dockerfileLines returns a Dockerfile's instructions: comments dropped, continuation lines joined.
func dockerfileLines(raw []byte) []string {
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	return append(out, cur.String())
}
