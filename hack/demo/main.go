// Command demo runs the local demo: on the swarm named by DOCKER_HOST (`make demo` starts a private one),
// it starts an in-process OCI registry on 127.0.0.1, assembles the demo image FROM scratch and pushes it,
// then runs the real agent binary to plan and apply examples/demo, and shows the service answering.
// With -cleanup it removes the demo stack instead.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/cosignkey"
	"github.com/sabeiro/sawmill/internal/imagebuild"
	"github.com/sabeiro/sawmill/internal/stack"
)

func main() {
	agent := flag.String("agent", "bin/agent", "the agent binary")
	cleanup := flag.Bool("cleanup", false, "remove the demo stack and exit")
	port := flag.String("port", "18080", "host port the demo web service publishes")
	flag.Parse()
	if err := run(*agent, *port, *cleanup); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(agent, port string, cleanup bool) error {
	ctx := context.Background()
	dc, err := client.New(client.FromEnv)
	if err != nil {
		return err
	}
	defer dc.Close()
	if cleanup {
		return remove(ctx, dc, "demo")
	}

	// The registry lives as long as this process; the engine pulls from it during the rollout.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	defer srv.Close()
	reg := l.Addr().String()
	fmt.Printf("== registry: in-process on %s\n", reg)

	bin, err := buildStatic("./internal/testenv/testsvc")
	if err != nil {
		return err
	}
	img, err := imagebuild.Image(imagebuild.Spec{Binary: bin, Name: "testsvc", ExposedPort: "8080"})
	if err != nil {
		return err
	}
	ref := reg + "/sawmill-demo/web:1"
	digest, err := imagebuild.Push(img, ref)
	if err != nil {
		return err
	}
	fmt.Printf("== image: %s@%s (FROM scratch, assembled without a daemon)\n", ref, digest)

	// Sign it with a key generated for this run; the agent verifies against its public half only.
	key, err := cosignkey.Generate()
	if err != nil {
		return err
	}
	if err := key.Sign(reg + "/sawmill-demo/web@" + digest); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sawmill-demo-trust")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	trust := filepath.Join(dir, "trust.yaml")
	pem := strings.ReplaceAll(strings.TrimSpace(key.PublicPEM), "\n", "\n            ")
	policy := fmt.Sprintf("trust:\n  rules:\n    - pattern: %q\n      mode: enforce\n      authorities:\n        - name: demo-key\n          key: |\n            %s\n", reg+"/**", pem)
	if err := os.WriteFile(trust, []byte(policy), 0o644); err != nil {
		return err
	}
	fmt.Printf("== signed %s@%s with a generated key (trust policy: %s)\n", ref, digest, trust)

	token := make([]byte, 16)
	_, _ = rand.Read(token)
	env := append(os.Environ(), "REGISTRY="+reg, "DEMO_PORT="+port, "DEMO_API_TOKEN="+hex.EncodeToString(token))
	// The demo image is not pinned by digest or signed yet and the demo publishes a port without an edge proxy:
	// the default policies would refuse it, so the demo runs them in warn mode and shows their decisions.
	for _, args := range [][]string{
		{"plan", "-c", "examples/demo/compose.yaml", "--policy-mode=warn", "--trust", trust},
		{"apply", "-c", "examples/demo/compose.yaml", "--timeout", "3m", "--policy-mode=warn", "--trust", trust},
		{"apply", "-c", "examples/demo/compose.yaml", "--policy-mode=warn", "--trust", trust},
	} {
		fmt.Printf("== agent %s\n", strings.Join(args, " "))
		cmd := exec.Command(agent, args...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("agent %s: %w", args[0], err)
		}
	}
	url := "http://127.0.0.1:" + port + "/"
	for i := 0; i < 40; i++ {
		r, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			fmt.Printf("== GET %s -> %d %s", url, r.StatusCode, b)
			fmt.Println("== done; `make demo-clean` removes the demo stack")
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("the demo service does not answer on %s", url)
}

func buildStatic(pkg string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "sawmill-demo")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "bin")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("build %s: %w", pkg, err)
	}
	return os.ReadFile(out)
}

// remove deletes the objects of the demo stack the agent created.
func remove(ctx context.Context, dc *client.Client, name string) error {
	f := make(client.Filters).Add("label", stack.LabelNamespace+"="+name).Add("label", stack.LabelOwner+"="+stack.OwnerValue)
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		if _, err := dc.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil {
			return err
		}
	}
	for i := 0; i < 60; i++ {
		left := 0
		secrets, _ := dc.SecretList(ctx, client.SecretListOptions{Filters: f})
		for _, s := range secrets.Items {
			if _, err := dc.SecretRemove(ctx, s.ID, client.SecretRemoveOptions{}); err != nil {
				left++
			}
		}
		configs, _ := dc.ConfigList(ctx, client.ConfigListOptions{Filters: f})
		for _, c := range configs.Items {
			if _, err := dc.ConfigRemove(ctx, c.ID, client.ConfigRemoveOptions{}); err != nil {
				left++
			}
		}
		nets, _ := dc.NetworkList(ctx, client.NetworkListOptions{Filters: f})
		for _, n := range nets.Items {
			if _, err := dc.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
				left++
			}
		}
		if left == 0 {
			fmt.Println("demo stack removed")
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("demo objects still in use after 30s")
}
