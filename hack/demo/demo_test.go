package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/testenv"
)

// TestDemo runs README's first command end to end on the test swarm, with the third-party image assembled
// from Debian's packages (as on a machine without Docker Hub): pipegen, build, sign, release, the agent
// once, the service answering, the second agent run changing nothing, and the cleanup.
func TestDemo(t *testing.T) {
	if _, err := os.Stat("/usr/lib/postgresql"); err != nil && os.Getenv("CI") != "true" {
		t.Skip("Debian's postgresql package is not installed (apt-get install postgresql)")
	}
	dc := testenv.Docker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin := t.TempDir()
	for _, p := range []string{"agent", "pipegen"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, p), "../../cmd/"+p)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p, err, out)
		}
	}
	port, livePort := freePort(t), freePort(t)
	t.Cleanup(func() {
		if err := remove(context.Background(), dc, "demo", &bytes.Buffer{}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	var out bytes.Buffer
	o := options{Agent: filepath.Join(bin, "agent"), Pipegen: filepath.Join(bin, "pipegen"), Port: port, LivePort: livePort, Images: "local",
		Repo: "../..", Stack: "../../examples/demo/compose.yaml"}
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

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strings.TrimPrefix(l.Addr().String(), "127.0.0.1:")
}
