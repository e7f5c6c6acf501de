package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// TestDaemonRecordsDeployments: the environment in GitLab shows what runs on the swarm. The agent records
// each rollout as a deployment of the environment through the Deployments API (testenv's stand-in records
// what it was told): a success of the commit that runs, a refused release as failed; the newest pipeline
// wins, not the deploy job that finished last; and what GitLab could not take is delivered later, once.
func TestDaemonRecordsDeployments(t *testing.T) {
	env := newDaemonEnv(t, testenv.Variable{Key: "DB_PASSWORD", Value: "pw-staging", Scope: "staging"})
	dc, image, port, name, gl := env.dc, env.image, env.port, env.name, env.gl
	// GitLab refuses writes (5xx) while writesDown is set; reads still work.
	var writesDown atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if writesDown.Load() && r.Method != http.MethodGet {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"message":"503 Service Unavailable"}`))
			return
		}
		gl.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("SAWMILL_GITLAB_URL", srv.URL)
	state := t.TempDir()
	once := func(mode string) agentRun {
		return runAgent(t, dc, "run", "--once", "--environment", "staging", "--state-dir", state, "--listen", "", "--policy-mode", mode, "--timeout", "2m")
	}
	labelled := func(release string) string {
		return "    labels:\n      release: " + release + "\n"
	}
	running := func() string {
		t.Helper()
		svc, err := dc.ServiceInspect(context.Background(), name+"_web", client.ServiceInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc.Service.Spec.TaskTemplate.ContainerSpec.Labels["release"]
	}
	// records is what the environment's page lists of the agent: "<commit[:1]>=<status>", oldest first.
	records := func() string {
		var out []string
		for _, d := range gl.Deployments("staging") {
			if d.Job == 0 {
				if d.Ref != "main" {
					t.Errorf("deployment %d of %s: ref %q, want main", d.ID, d.SHA[:7], d.Ref)
				}
				out = append(out, d.SHA[:1]+"="+d.Status)
			}
		}
		return strings.Join(out, " ")
	}
	commit := func(c string) string { return strings.Repeat(c, 40) }
	base := time.Now()

	gl.AddDeployment(testenv.Deployment{ID: 1, Job: 11, Pipeline: 1, Environment: "staging", Status: "success", SHA: commit("a"), Finished: base},
		release(name, commit("a"), image, port, labelled("a")))
	if r := once("warn"); r.code != 0 {
		t.Fatalf("release a: exit %d\n%s", r.code, r.stderr)
	}
	if got := records(); got != "a=success" {
		t.Fatalf("staging's deployments: %q, want a=success", got)
	}

	// Pipelines 2 and 3 deploy; pipeline 2's deploy job, the older one, finishes last. Pipeline 3 runs.
	gl.AddDeployment(testenv.Deployment{ID: 2, Job: 12, Pipeline: 2, Environment: "staging", Status: "success", SHA: commit("b"), Finished: base.Add(2 * time.Minute)},
		release(name, commit("b"), image, port, labelled("b")))
	gl.AddDeployment(testenv.Deployment{ID: 3, Job: 13, Pipeline: 3, Environment: "staging", Status: "success", SHA: commit("c"), Finished: base.Add(time.Minute)},
		release(name, commit("c"), image, port, labelled("c")))
	if r := once("warn"); r.code != 0 {
		t.Fatalf("pipeline 3: exit %d\n%s", r.code, r.stderr)
	}
	if got := running(); got != "c" {
		t.Fatalf("staging runs release %q; want c, of the newest pipeline, not b, whose deploy job finished last", got)
	}
	if got := records(); got != "a=success c=success" {
		t.Fatalf("staging's deployments: %q, want a=success c=success", got)
	}

	// A release the policies refuse: the environment shows it failed; c keeps running.
	gl.AddDeployment(testenv.Deployment{ID: 4, Job: 14, Pipeline: 4, Environment: "staging", Status: "success", SHA: commit("d"), Finished: base.Add(3 * time.Minute)},
		release(name, commit("d"), image, port, "    privileged: true\n    network_mode: host\n"))
	if r := once("enforce"); r.code != 3 {
		t.Fatalf("refused release: exit %d, want 3", r.code)
	}
	if got := records(); got != "a=success c=success d=failed" {
		t.Fatalf("staging's deployments: %q, want d recorded failed", got)
	}
	if got := running(); got != "c" {
		t.Fatalf("after the refusal staging runs %q", got)
	}

	// GitLab takes no writes while release e rolls out: it runs, its records wait in the state file, and are
	// delivered once GitLab is back, once.
	gl.AddDeployment(testenv.Deployment{ID: 5, Job: 15, Pipeline: 5, Environment: "staging", Status: "success", SHA: commit("e"), Finished: base.Add(4 * time.Minute)},
		release(name, commit("e"), image, port, labelled("e")))
	writesDown.Store(true)
	if r := once("warn"); r.code != 0 {
		t.Fatalf("release e: exit %d\n%s", r.code, r.stderr)
	}
	if got := running(); got != "e" {
		t.Fatalf("staging runs %q, want e", got)
	}
	if got := records(); got != "a=success c=success d=failed" {
		t.Fatalf("GitLab down, yet told: %q", got)
	}
	writesDown.Store(false)
	for range 2 {
		if r := once("warn"); r.code != 0 {
			t.Fatalf("after the outage: exit %d\n%s", r.code, r.stderr)
		}
	}
	if got := records(); got != "a=success c=success d=failed e=success" {
		t.Fatalf("after the outage staging's deployments: %q, want e recorded once, success", got)
	}
	assertStatus(t, gl, commit("e"), "sawmill/staging", "success")
}
