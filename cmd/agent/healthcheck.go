package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// healthcheckCmd is `agent healthcheck`: the container image's HEALTHCHECK (a FROM scratch image has no
// curl). It asks the running agent's /readyz (or --path) on its listen address and exits 0 when it answers
// 200, 1 otherwise.
func healthcheckCmd(d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "healthcheck [--addr ADDR] [--path /readyz]",
		Short: "Probe the running agent's /readyz (the container's healthcheck); exit 0 when ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, _ := cmd.Flags().GetString("addr")
			path, _ := cmd.Flags().GetString("path")
			timeout, _ := cmd.Flags().GetDuration("timeout")
			if addr == "" {
				addr = os.Getenv("SAWMILL_LISTEN")
			}
			if addr == "" {
				addr = defaultConfig().Listen
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := probe(ctx, addr, path); err != nil {
				return exitError{code: 1, err: err}
			}
			fmt.Fprintln(d.stdout, "ok")
			return nil
		},
	}
	f := cmd.Flags()
	f.String("addr", "", "the agent's listen address (default: $SAWMILL_LISTEN, else "+defaultConfig().Listen+"); unix:///path for a socket")
	f.String("path", "/readyz", "the endpoint to probe")
	f.Duration("timeout", 3*time.Second, "how long the probe may take")
	return cmd
}

// probe GETs path on the agent listening on addr (host:port, :port, or unix:///path).
func probe(ctx context.Context, addr, path string) error {
	network, address := listenAddr(addr)
	if network == "tcp" {
		host, port, err := net.SplitHostPort(address)
		if err != nil {
			return fmt.Errorf("address %q: %w", addr, err)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1" // listening on every address: probe loopback
		}
		address = net.JoinHostPort(host, port)
	}
	// The agent's own listener on this host (agent.yaml tls: set): its certificate names the service, not
	// the loopback address, and this probe reads nothing but a status.
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, network, address)
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback probe of a status code
	}
	defer tr.CloseIdleConnections()
	get := func(scheme string) (*http.Response, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://agent"+path, nil)
		if err != nil {
			return nil, nil, err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return nil, nil, fmt.Errorf("probe %s: %w", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return resp, body, nil
	}
	resp, body, err := get("http")
	if err == nil && resp.StatusCode == http.StatusBadRequest && strings.Contains(string(body), "HTTPS server") {
		resp, body, err = get("https") // the agent serves TLS (agent.yaml tls:)
	}
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// listenAddr splits the listen setting into a network and an address: unix:///path is a Unix socket (one
// per container, so the two tasks of a start-first update on one host never compete for a port), anything
// else TCP.
func listenAddr(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		return "unix", p
	}
	return "tcp", addr
}

// listen opens the agent's HTTP listener; a stale Unix socket of an earlier process is removed first.
func listen(addr string) (net.Listener, error) {
	network, address := listenAddr(addr)
	if network == "unix" {
		if fi, err := os.Lstat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(address)
		}
	}
	return net.Listen(network, address)
}
