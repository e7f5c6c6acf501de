package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testing/imagebuild"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// TestDemo runs README's first command end to end on the test swarm, with the third-party image assembled
// from Debian's packages (as on a machine without Docker Hub): pipegen, build, sign, release, the agent
// once, the service answering, the second agent run changing nothing, and the cleanup.
func TestDemo(t *testing.T) {
	dc, o := setupDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	o.Images = "local"
	var out bytes.Buffer
	err := run(ctx, dc, o, &out)
	text := out.String()
	t.Logf("demo output:\n%s", text)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}

	for _, want := range []*regexp.Regexp{
		// pipegen on this repository
		regexp.MustCompile(`(?m)^go_ingest\s+rebuilt`),
		regexp.MustCompile(`child pipeline has \d+ jobs: .*build:go_ingest .*sign:go_ingest .*release`),
		// the release pins go_ingest
		regexp.MustCompile(`release: image: 127\.0\.0\.1:\d+/sawmill/go_ingest:[0-9a-f]{40}@sha256:[0-9a-f]{64}`),
		// the agent verified both images built here against the generated key
		regexp.MustCompile(`image 127\.0\.0\.1:\d+/sawmill/go_ingest:\S+: verified sha256:[0-9a-f]{64} signed by demo-key`),
		regexp.MustCompile(`image 127\.0\.0\.1:\d+/sawmill/postgres:debian@sha256:[0-9a-f]{64}: verified sha256:[0-9a-f]{64} signed by demo-key`),
		regexp.MustCompile(`image 127\.0\.0\.1:\d+/sawmill/live_py:\S+: verified sha256:[0-9a-f]{64} signed by demo-key`),
		// what the policies said: the exception in use
		regexp.MustCompile(`policy warn exception: go_ingest: exception for rule published_ports`),
		// the plan it applied
		regexp.MustCompile(`service\s+demo_postgres\s+created`),
		regexp.MustCompile(`service\s+demo_go_ingest\s+created`),
		regexp.MustCompile(`service\s+demo_live_py\s+created`),
		// the service answering, with rows written to PostgreSQL
		regexp.MustCompile(`GET http://127\.0\.0\.1:\d+/healthz -> 200`),
		regexp.MustCompile(`POST \S+/v1/ingest/events \(2 records, bearer token\) -> 200 \{"rows":2,"table":"events"\}`),
		// live_py saw them: an activity event on its stream, two rows more in public.events
		regexp.MustCompile(`live_py streamed .*event: activity data: .*"table": ?"public\.events".*"delta": ?2`),
	} {
		if !want.MatchString(text) {
			t.Errorf("the demo output lacks %s", want)
		}
	}
	// The second run found the release deployed: nothing to change.
	i := strings.Index(text, "agent run --once again")
	if i < 0 {
		t.Fatal("the demo did not run the agent a second time")
	}
	if second := text[i:]; !strings.Contains(second, "0 created, 0 configured, 7 unchanged, 0 deleted") {
		t.Errorf("the second agent run changed the stack:\n%s", second)
	}
	// Secrets are never printed.
	if strings.Contains(text, "DEMO_DB_PASSWORD=") || strings.Contains(text, "DEMO_INGEST_TOKEN=") {
		t.Error("the demo printed a secret variable")
	}

	// The swarm runs the signed digests.
	f := make(client.Filters).Add("label", stack.LabelNamespace+"=demo")
	svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]string{}
	for _, s := range svcs.Items {
		images[s.Spec.Name] = s.Spec.TaskTemplate.ContainerSpec.Image
	}
	for _, name := range []string{"demo_go_ingest", "demo_live_py", "demo_postgres"} {
		if !regexp.MustCompile(`@sha256:[0-9a-f]{64}$`).MatchString(images[name]) {
			t.Errorf("service %s runs %q, not a digest-pinned image", name, images[name])
		}
	}

	// -cleanup removes it.
	if err := remove(ctx, dc, "demo", &out); err != nil {
		t.Fatal(err)
	}
	svcs, err = dc.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil || len(svcs.Items) != 0 {
		t.Errorf("after cleanup: %d services left, err %v", len(svcs.Items), err)
	}
	if err := removeImages(ctx, dc, &out); err != nil {
		t.Fatal(err)
	}
	list, err := dc.ImageList(ctx, client.ImageListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range list.Items {
		for _, ref := range append(img.RepoTags, img.RepoDigests...) {
			if demoImage.MatchString(ref) {
				t.Errorf("after cleanup the engine still has the demo image %s", ref)
			}
		}
	}
}

// TestDemoUpstream runs the demo as on a machine that reaches Docker Hub (-images auto): a second in-process
// registry stands in for Docker Hub with a postgres image under library/postgres. The demo deploys that image
// as it is, pinned, instead of assembling one; the agent reports its missing cosign signature as a warning
// (the trust policy's warn rule for the upstream image) and deploys; the stack works on it. With -images
// upstream and the upstream registry unreachable, the demo stops before deploying anything.
func TestDemoUpstream(t *testing.T) {
	dc, o := setupDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	hub := testenv.Registry(t)
	img, err := imagebuild.PostgresDebian()
	if err != nil {
		t.Fatal(err)
	}
	digest, err := imagebuild.Push(img, hub+"/library/postgres:16")
	if err != nil {
		t.Fatal(err)
	}
	f := make(client.Filters).Add("label", stack.LabelNamespace+"=demo")

	t.Run("unreachable upstream", func(t *testing.T) {
		o := o
		o.Images, o.UpstreamPostgres = "upstream", "127.0.0.1:1/library/postgres:16@"+digest
		var out bytes.Buffer
		err := run(ctx, dc, o, &out)
		if err == nil || !strings.Contains(err.Error(), "upstream image 127.0.0.1:1/library/postgres:16@"+digest) {
			t.Fatalf("want an error naming the unreachable upstream image, got %v\n%s", err, out.String())
		}
		svcs, err := dc.ServiceList(ctx, client.ServiceListOptions{Filters: f})
		if err != nil || len(svcs.Items) != 0 {
			t.Fatalf("the failed demo deployed %d services (err %v)", len(svcs.Items), err)
		}
	})

	o.Images, o.UpstreamPostgres = "auto", hub+"/library/postgres:16@"+digest
	var out bytes.Buffer
	err = run(ctx, dc, o, &out)
	text := out.String()
	t.Logf("demo output:\n%s", text)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	for _, want := range []string{
		"== postgres: upstream " + o.UpstreamPostgres + " (its registry answers)",
		"image " + o.UpstreamPostgres + ": warned " + digest,
		"service  demo_postgres ",
		`-> 200 {"rows":2,"table":"events"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the demo output lacks %q", want)
		}
	}
	if strings.Contains(text, "built postgres") || strings.Contains(text, "signed "+hub) {
		t.Error("the demo built or signed a PostgreSQL image although the upstream one answered")
	}
	svc, err := dc.ServiceInspect(ctx, "demo_postgres", client.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.Service.Spec.TaskTemplate.ContainerSpec.Image; got != o.UpstreamPostgres {
		t.Errorf("demo_postgres runs %s, want the upstream image as pinned, %s", got, o.UpstreamPostgres)
	}
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// setupDemo returns the test engine and the demo's options: the agent and pipegen built once for the test
// binary, free host ports, this repository; the demo stack is removed when the test ends.
func setupDemo(t *testing.T) (*client.Client, options) {
	t.Helper()
	if _, err := os.Stat("/usr/lib/postgresql"); err != nil && os.Getenv("CI") != "true" {
		t.Skip("Debian's postgresql package is not installed (apt-get install postgresql)")
	}
	dc := testenv.Docker(t)
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "sawmill-demo-test"); buildErr != nil {
			return
		}
		for _, p := range []string{"agent", "pipegen"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, p), "../../cmd/"+p)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %w\n%s", p, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Cleanup(func() {
		if err := remove(context.Background(), dc, "demo", &bytes.Buffer{}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dc, options{Agent: filepath.Join(binDir, "agent"), Pipegen: filepath.Join(binDir, "pipegen"),
		Port: strconv.Itoa(testenv.FreePort(t)), LivePort: strconv.Itoa(testenv.FreePort(t)), Repo: "../..", Stack: "../../examples/demo/compose.yaml",
		UpstreamPostgres: upstreamPostgres}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}
