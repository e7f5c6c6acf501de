// Package imagebuild assembles FROM scratch container images and pushes them to a registry, without a Docker
// daemon and without pulling a base image. The tests and the local demo use it where no registry on the
// internet can be reached.
//
// Image makes a one-binary image from a static binary. PostgresDebian and LivePyDebian make images from the
// Debian packages installed on this machine: their files (dpkg -L), the shared libraries those need (ldd) and
// files written for the image, in one deterministic layer (debian.go); the same installed files give the same
// digest. PostgresDebian is a PostgreSQL server with the upstream postgres image's interface (POSTGRES_*
// environment, /docker-entrypoint-initdb.d, uid 999) and a bash entrypoint. LivePyDebian is images/live_py
// (live.py and static/ in /app) on Debian's python3 and python3-psycopg2, with its Dockerfile's configuration.
// GoDebian is a Go toolchain image (this machine's Go installation and a shell) that the repository's
// Dockerfiles build FROM (GO_IMAGE) when buildah builds them offline (golang.go).
//
// In: a binary, or the machine's installed packages (and live_py's app directory); an image reference. Out:
// the pushed image's digest. Imports go-containerregistry and the standard library; PostgresDebian and
// LivePyDebian run dpkg and ldd, GoDebian runs go env.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec describes a one-binary image.
type Spec struct {
	// Binary is the executable's content; it is placed at /<Name>.
	Binary []byte
	Name   string
	// Args follow the binary in the entrypoint.
	Args []string
	Env  []string
	// User defaults to 65534 (nobody).
	User string
	// ExposedPort, when set, is recorded as "<port>/tcp".
	ExposedPort string
	// Dirs are empty directories (mode 0700) owned by UID and GID: a named volume mounted on one takes its
	// owner, so a non-root process can write there.
	Dirs     []string
	UID, GID int
}

// Image builds the image.
func Image(s Spec) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range s.Dirs {
		parts := strings.Split(strings.Trim(d, "/"), "/")
		for i := range parts {
			h := &tar.Header{Name: strings.Join(parts[:i+1], "/") + "/", Mode: 0o755, Typeflag: tar.TypeDir}
			if i == len(parts)-1 {
				h.Mode, h.Uid, h.Gid = 0o700, s.UID, s.GID
			}
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: s.Name, Mode: 0o755, Size: int64(len(s.Binary)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(s.Binary); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	cfg := v1.Config{Entrypoint: append([]string{path.Join("/", s.Name)}, s.Args...), Env: s.Env, User: s.User}
	if cfg.User == "" {
		cfg.User = "65534"
	}
	if s.ExposedPort != "" {
		cfg.ExposedPorts = map[string]struct{}{s.ExposedPort + "/tcp": {}}
	}
	return oneLayer(buf.Bytes(), cfg)
}

// oneLayer makes a linux image for this machine's architecture of one layer (a tar stream, plain or gzipped)
// and the given configuration.
func oneLayer(data []byte, config v1.Config) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = runtime.GOARCH, "linux"
	cfg.Config = config
	return mutate.ConfigFile(img, cfg)
}

// Push writes img to ref and returns its digest. Registries on loopback are spoken to over plain HTTP.
func Push(img v1.Image, ref string, opts ...remote.Option) (string, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	opts = append([]remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.Write(r, img, opts...); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}
