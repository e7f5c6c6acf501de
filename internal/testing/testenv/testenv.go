// Package testenv gives tests the real components they run against: the swarm-mode Docker engine the test
// harness started (hack/dockerd.sh, named by SAWMILL_TEST_DOCKER_HOST; never the developer's own engine
// unless pointed at it), an in-process OCI registry on 127.0.0.1, and FROM scratch images of the testsvc
// workload pushed to it.
//
// Only tests import it. It imports the Docker client, go-containerregistry and the standard library.
package testenv

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
)

// DockerHostEnv names the engine the tests may use.
const DockerHostEnv = "SAWMILL_TEST_DOCKER_HOST"

// Docker returns a client for the test engine, and sets DOCKER_HOST for the test so that code that reads
// the Docker environment (and the docker CLI) talks to the same engine. Without the engine the test is
// skipped, or fails when CI=true.
func Docker(t testing.TB) *client.Client {
	t.Helper()
	host := os.Getenv(DockerHostEnv)
	if host == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: run the tests with `make test`, which starts a private swarm-mode dockerd", DockerHostEnv)
		}
		t.Skipf("%s is not set: run `make test` (it starts a private swarm-mode dockerd)", DockerHostEnv)
	}
	t.Setenv("DOCKER_HOST", host)
	c, err := client.New(client.WithHost(host))
	if err != nil {
		t.Fatalf("docker client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := c.Info(ctx, client.InfoOptions{})
	if err != nil {
		t.Fatalf("test engine %s: %v", host, err)
	}
	if !info.Info.Swarm.ControlAvailable {
		t.Fatalf("test engine %s is not a swarm manager (hack/dockerd.sh start makes it one)", host)
	}
	return c
}

// Registry starts an in-process OCI registry on 127.0.0.1 (Docker pulls from loopback registries over plain
// HTTP) and returns its host:port.
func Registry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago, for a host-mode published port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	buildOnce sync.Once
	binary    []byte
	buildErr  error
)

// testsvcBinary compiles testsvc statically, once per test process.
func testsvcBinary(t testing.TB) []byte {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		dir, err := os.MkdirTemp("", "testsvc")
		if err != nil {
			buildErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "testsvc")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./testsvc")
		cmd.Dir = filepath.Dir(file)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build testsvc: %v\n%s", err, b)
			return
		}
		binary, buildErr = os.ReadFile(out)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// Image builds a FROM scratch image holding /testsvc with env set (e.g. MESSAGE=v1), pushes it to
// ref (repo:tag in a test registry) and returns the image and its digest.
func Image(t testing.TB, ref string, env ...string) (v1.Image, string) {
	t.Helper()
	img, err := imagebuild.Image(imagebuild.Spec{Binary: testsvcBinary(t), Name: "testsvc", Env: env})
	if err != nil {
		t.Fatal(err)
	}
	d, err := imagebuild.Push(img, ref)
	if err != nil {
		t.Fatal(err)
	}
	return img, d
}

// PushRandom writes a small random image to ref (repo:tag in a test registry) and returns its digest.
func PushRandom(t testing.TB, ref string) string {
	t.Helper()
	img, err := random.Image(128, 1)
	if err != nil {
		t.Fatal(err)
	}
	d, err := imagebuild.Push(img, ref)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// StallingRegistry is Registry, except that while Stall is set every blob download sends half of the blob
// and then stops, until the client gives up: a registry that stalls mid-blob.
func StallingRegistry(t testing.TB) (host string, stall *atomic.Bool) {
	t.Helper()
	stall = &atomic.Bool{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !stall.Load() || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			reg.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		_, _ = w.Write(body[:len(body)/2])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), stall
}
