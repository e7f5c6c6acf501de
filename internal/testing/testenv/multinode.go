package testenv

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"
)

// MultinodeEnv names the script that runs a 3-manager swarm in network namespaces (hack/multinode.sh);
// `make test` and `make faults` set it. Only one such swarm can exist on a machine at a time.
const MultinodeEnv = "SAWMILL_TEST_MULTINODE"

// Cluster is a 3-manager swarm of dockerd processes, each in a network namespace of its own (mn-n1..3,
// 10.213.0.11–13, joined by a bridge in mn-hub). The test process stays in the host's namespace: it talks to
// each engine over its unix socket and reaches the nodes' addresses through Dial.
type Cluster struct {
	t      testing.TB
	script string
	dir    string
}

// Multinode starts the cluster and removes it when the test ends. Without root, the tools or MultinodeEnv,
// the test is skipped, or fails when CI=true.
func Multinode(t testing.TB) *Cluster {
	t.Helper()
	script := os.Getenv(MultinodeEnv)
	missing := ""
	switch {
	case script == "":
		missing = MultinodeEnv + " is not set (make test sets it to hack/multinode.sh)"
	case os.Geteuid() != 0:
		missing = "the multi-node swarm needs root (network namespaces, dockerd)"
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "dockerd", "docker"} {
		if _, err := exec.LookPath(tool); err != nil && missing == "" {
			missing = tool + " is not installed"
		}
	}
	if missing != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(missing)
		}
		t.Skip(missing)
	}
	c := &Cluster{t: t, script: script, dir: "/tmp/sawmill-mn"}
	c.run("down") // what a killed test left behind
	t.Cleanup(func() { c.run("down") })
	if out, err := c.run("up"); err != nil {
		t.Fatalf("multinode up: %v\n%s", err, out)
	}
	return c
}

func (c *Cluster) run(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{c.script}, args...)...)
	cmd.Env = append(os.Environ(), "MN_DIR="+c.dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *Cluster) do(args ...string) {
	c.t.Helper()
	if out, err := c.run(args...); err != nil {
		c.t.Fatalf("multinode %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Host is the DOCKER_HOST of node n (1..3).
func (c *Cluster) Host(n int) string { return fmt.Sprintf("unix://%s/node%d/docker.sock", c.dir, n) }

// Docker returns a client for node n's engine.
func (c *Cluster) Docker(n int) *client.Client {
	c.t.Helper()
	dc, err := client.New(client.WithHost(c.Host(n)))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { dc.Close() })
	return dc
}

// Crash kills node n with everything it runs (a lost machine); Start brings it back.
func (c *Cluster) Crash(n int) { c.do("crash", fmt.Sprint(n)) }

// Stop stops node n's dockerd (SIGTERM, as `systemctl stop docker` does).
func (c *Cluster) Stop(n int) { c.do("stop", fmt.Sprint(n)) }

// Start starts node n's dockerd again; it rejoins the swarm with its data root.
func (c *Cluster) Start(n int) { c.do("start", fmt.Sprint(n)) }

// Part cuts node n off the others; Heal reconnects it.
func (c *Cluster) Part(n int) { c.do("part", fmt.Sprint(n)) }

// Heal reconnects node n.
func (c *Cluster) Heal(n int) { c.do("heal", fmt.Sprint(n)) }

// BlockOverlay leaves a VXLAN interface with the overlay network's VNI in node n's namespace, as a restarted
// engine can (moby/libnetwork#1765): node n's engine then rejects every task on that network. Call it while
// the node's dockerd is stopped. ClearOverlay is the operator's repair (every VXLAN interface of the node's
// own namespace deleted).
func (c *Cluster) BlockOverlay(n int, vni string) { c.do("vxblock", fmt.Sprint(n), vni) }

// ClearOverlay deletes the VXLAN interfaces of node n's own namespace (see BlockOverlay).
func (c *Cluster) ClearOverlay(n int) { c.do("vxclear", fmt.Sprint(n)) }

// NodeReady reports whether node m sees node n's engine as Ready (n's hostname is node<n>).
func (c *Cluster) NodeReady(m, n int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dc, err := client.New(client.WithHost(c.Host(m)))
	if err != nil {
		return false
	}
	defer dc.Close()
	nodes, err := dc.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return false
	}
	for _, node := range nodes.Items {
		if node.Description.Hostname == fmt.Sprintf("node%d", n) {
			return node.Status.State == "ready"
		}
	}
	return false
}

// inNetns runs f on a thread that has entered the network namespace ns (e.g. "mn-n1"). A socket made there
// stays in that namespace, whichever thread uses it later.
func inNetns(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer own.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter %s: %w", ns, err)
	}
	ferr := f()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread cannot go back: keep it locked so that it ends with the goroutine.
		runtime.LockOSThread()
		return fmt.Errorf("leave %s: %w", ns, err)
	}
	return ferr
}

// Registry serves one in-process OCI registry on 127.0.0.1:port in the host's namespace and in each node's:
// an image pushed to the returned host:port from the test is pulled by every node from the same name (Docker
// pulls from loopback registries over plain HTTP).
func (c *Cluster) Registry() string {
	c.t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	listeners := []net.Listener{host}
	addr := host.Addr().String()
	for n := 1; n <= 3; n++ {
		err := inNetns(fmt.Sprintf("mn-n%d", n), func() error {
			l, err := net.Listen("tcp", addr)
			if err == nil {
				listeners = append(listeners, l)
			}
			return err
		})
		if err != nil {
			c.t.Fatalf("registry on node %d: %v", n, err)
		}
	}
	for _, l := range listeners {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		c.t.Cleanup(func() { _ = srv.Close() })
	}
	return addr
}

// HTTPClient returns a client whose connections are made from node n's namespace: it reaches what node n
// publishes in host mode on its own loopback.
func (c *Cluster) HTTPClient(n int) *http.Client {
	ns := fmt.Sprintf("mn-n%d", n)
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := inNetns(ns, func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
}
