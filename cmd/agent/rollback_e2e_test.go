package main

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// The daemon on the private swarm, releases from the GitLab stand-in: A then B are deployed; `agent
// rollback` to A re-applies A (signatures verified again) and pins the environment there: cycle after cycle A
// runs although B is the newest deployment. The status page, in headless Chromium, shows what runs (service,
// digest, signer, replicas, last cycle) and the pin. A newer deployment C lifts the pin; `agent unpin` lifts
// another one.
func TestDaemonRollbackPinAndStatusPage(t *testing.T) {
	secret := "pw-" + randomName("page") + "-do-not-show"
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: secret, Scope: "*"})
	dc, reg, port, name, gl := env.dc, env.reg, env.port, env.name, env.gl
	state := t.TempDir()

	// Three signed images: A, B, C.
	images, key := signedImages(t, reg)
	statusAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	pem := strings.ReplaceAll(strings.TrimSpace(key.PublicPEM), "\n", "\n            ")
	writeFile(t, cfg, fmt.Sprintf("history: {keep: 5}\nstatus: {listen: %q}\ntrust:\n  rules:\n    - pattern: %q\n      authorities:\n        - name: release-key\n          key: |\n            %s\n",
		statusAddr, reg+"/**", pem))

	deploy := deployer(gl, name, port, images)
	running := func() string { return serviceImage(dc, name+"_web") }
	view := func() statusView {
		var v statusView
		resp, err := http.Get("http://" + statusAddr + "/status")
		if err != nil {
			return v
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return v
	}

	deploy(1, "v1")
	startDaemon(t, dc, "--config", cfg, "--skip-verify=false", "--environment", "staging", "--state-dir", state, "--interval", "1s",
		"--policy-mode", "warn", "--timeout", "2m")
	waitFor(t, "A to run", 2*time.Minute, func() bool { return running() == images["v1"] && done(view(), "deployment-1") })
	deploy(2, "v2")
	waitFor(t, "B to run", 2*time.Minute, func() bool { return running() == images["v2"] && done(view(), "deployment-2") })

	// A release that is not in the history: exit 2, nothing asked.
	if r := runAgent(t, dc, "rollback", "--state-dir", state, "--to", "deployment-99"); r.code != 2 || !strings.Contains(r.stderr, "not in the history") {
		t.Fatalf("rollback to an unknown release: exit %d, want 2", r.code)
	}
	// Rollback (the previous successful release: A), waiting for the daemon's answer.
	r := runAgent(t, dc, "rollback", "--state-dir", state, "--reason", "v2 breaks checkout", "--wait", "2m")
	if r.code != 0 || !strings.Contains(r.stdout, "rolled back to deployment-1") {
		t.Fatalf("agent rollback: exit %d, want 0", r.code)
	}
	if got := running(); got != images["v1"] {
		t.Fatalf("after the rollback the swarm runs %s, want A %s", got, images["v1"])
	}
	v := view()
	if v.Pin == nil || v.Pin.Release != "deployment-1" || v.Pin.Over != "deployment-2" || v.Pin.Reason != "v2 breaks checkout" {
		t.Fatalf("/status pin %+v", v.Pin)
	}
	// Several cycles later A still runs: the pin holds although B is the newest deployment.
	since := v.Time
	waitFor(t, "three more cycles", time.Minute, func() bool {
		n := 0
		for _, c := range view().Cycles {
			if c.Time.After(since) {
				n++
			}
		}
		return n >= 3
	})
	for _, c := range view().Cycles {
		if !c.Time.Before(since) && (c.Release != "deployment-1" || c.Outcome != "success") {
			t.Fatalf("a cycle while pinned: %+v, want deployment-1 success", c)
		}
	}
	if got := running(); got != images["v1"] {
		t.Fatalf("while pinned the swarm runs %s, want A", got)
	}

	// Drift while pinned: a change made outside the agent is put back to A, and counted.
	svc, err := dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := svc.Service.Spec
	spec.TaskTemplate.ContainerSpec.Image = images["v2"]
	if _, err := dc.ServiceUpdate(context.Background(), svc.Service.ID, client.ServiceUpdateOptions{Version: svc.Service.Version, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the drift to be put back", 2*time.Minute, func() bool {
		v := view()
		return running() == images["v1"] && len(v.Stacks) == 1 && len(v.Stacks[0].Services) == 1 && v.Stacks[0].Services[0].Drift == 1
	})

	t.Run("status page in Chromium", func(t *testing.T) {
		text, dom := browse(t, "http://"+statusAddr+"/", "status-page.png")
		for _, want := range []string{
			name + "_web", // the service
			images["v1"][strings.Index(images["v1"], "@")+1:], // its digest
			"verified: release-key",                           // who signed it
			"1/1",                                             // replicas running/desired
			"healthy",                                         // health
			"Last cycle success",                              // the last cycle's outcome
			"Pinned to deployment-1",                          // the pin
			"v2 breaks checkout",                              // its reason
			"newer than deployment-2",                         // when it lifts
			"deployment-2",                                    // the history
			" 1 (last ",                                       // drift put back once
			"live: updated",                                   // the page's script read /status
		} {
			if !strings.Contains(text, want) {
				t.Errorf("the page does not show %q:\n%s", want, text)
			}
		}
		if strings.Contains(dom, secret) {
			t.Fatal("the page shows a secret value")
		}
	})
	if b, _ := json.Marshal(view()); strings.Contains(string(b), secret) {
		t.Fatal("/status shows a secret value")
	}

	// agent history lists the releases, the rollback, and the pin.
	h := runAgent(t, dc, "history", "--state-dir", state)
	if h.code != 0 || !regexp.MustCompile(`(?m)^deployment-1 \(rollback\)\s+1111111111`).MatchString(h.stdout) || !strings.Contains(h.stdout, "pinned to deployment-1") {
		t.Fatalf("agent history: exit %d:\n%s", h.code, h.stdout)
	}

	// A newer deployment lifts the pin: C runs.
	deploy(3, "v3")
	waitFor(t, "C to run and the pin to lift", 2*time.Minute, func() bool { return running() == images["v3"] && view().Pin == nil })

	// Pinned again (to B), then agent unpin: C runs again.
	if r := runAgent(t, dc, "rollback", "--state-dir", state, "--to", "deployment-2", "--wait", "2m"); r.code != 0 || running() != images["v2"] {
		t.Fatalf("rollback to B: exit %d, runs %s", r.code, running())
	}
	if r := runAgent(t, dc, "unpin", "--state-dir", state, "--wait", "2m"); r.code != 0 {
		t.Fatalf("agent unpin: exit %d", r.code)
	}
	waitFor(t, "C to run after unpin", 2*time.Minute, func() bool { return running() == images["v3"] && view().Pin == nil })
	if r := runAgent(t, dc, "unpin", "--state-dir", state); r.code != 0 || !strings.Contains(r.stdout, "not pinned") {
		t.Fatalf("unpin when not pinned: exit %d", r.code)
	}
}

// done: the last cycle rolled release out.
func done(v statusView, release string) bool { return v.Outcome == "success" && v.Release == release }

// statusView is what the test reads of /status.
type statusView struct {
	Time    time.Time `json:"time"`
	Outcome string    `json:"outcome"`
	Release string    `json:"release"`
	Pin     *struct {
		Release, Over, Reason string
	} `json:"pin"`
	Stacks []struct {
		Services []struct {
			Drift int `json:"drift_put_back"`
		} `json:"services"`
	} `json:"stacks"`
	Cycles []struct {
		Time    time.Time `json:"time"`
		Outcome string    `json:"outcome"`
		Release string    `json:"release"`
	} `json:"cycles"`
}

// browse loads url in headless Chromium after its scripts ran (virtual time), and returns the page's text as
// a person reads it and its DOM; a screenshot is kept as a test artifact (in $SAWMILL_ARTIFACTS, or a
// directory under the system's temporary directory; the path is logged). Without Chromium the test is
// skipped, or fails when CI=true.
func browse(t *testing.T, url, shot string) (text, dom string) {
	t.Helper()
	exe := ""
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed (CI=true): apt-get install -y chromium")
		}
		t.Skip("chromium is not installed (apt-get install -y chromium)")
	}
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--window-size=1400,1000", "--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}
	chrome := func(args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, append(append(append([]string(nil), flags...), args...), url)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return out
	}
	dom = string(chrome("--dump-dom"))
	dir := os.Getenv("SAWMILL_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sawmill-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, shot)
	chrome("--screenshot=" + path)
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("no screenshot at %s: %v", path, err)
	}
	t.Logf("screenshot of %s: %s", url, path)
	return visibleText(dom), dom
}

var (
	invisible = regexp.MustCompile(`(?is)<(script|style|head)\b.*?</(script|style|head)>`)
	block     = regexp.MustCompile(`(?i)</?(td|th|tr|dd|dt|p|div|h1|h2|li|ul|dl|section|header|table|thead|tbody|br)\b[^>]*>`)
	tag       = regexp.MustCompile(`<[^>]*>`)
	space     = regexp.MustCompile(`\s+`)
)

// visibleText is the text of an HTML document, as a person reads it: no markup, whitespace collapsed.
func visibleText(doc string) string {
	s := invisible.ReplaceAllString(doc, " ")
	s = block.ReplaceAllString(s, " ")
	s = tag.ReplaceAllString(s, "")
	return strings.TrimSpace(space.ReplaceAllString(html.UnescapeString(s), " "))
}
