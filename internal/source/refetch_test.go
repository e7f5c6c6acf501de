package source

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// Follow.Release fetches an earlier deployment of the environment again by its key (the release of a pin
// another agent set), and only a successful one of this environment that a job made.
func TestFollowFetchesAnEarlierDeploymentAgain(t *testing.T) {
	f, g := newFake(t)
	f.AddDeployment(testenv.Deployment{ID: 6, Environment: "production", Status: "success", SHA: sha2}, nil) // an API-created record
	fl := &Follow{GitLab: g, Dir: t.TempDir()}
	ctx := context.Background()
	rel, err := fl.Release(ctx, "deployment-2")
	if err != nil {
		t.Fatal(err)
	}
	if rel.DeploymentID != 2 || rel.JobID != 102 || rel.Manifest.Commit != sha2 || rel.Ref != "main" {
		t.Fatalf("release %+v", rel)
	}
	if b, err := os.ReadFile(filepath.Join(rel.Dir, "stacks/platform/compose.production.yaml")); err != nil || !strings.Contains(string(b), "replicas: 3") {
		t.Fatalf("compose file: %q %v", b, err)
	}
	for key, want := range map[string]string{
		"deployment-3":  "failed, not success",
		"deployment-4":  "not of environment production",
		"deployment-6":  "not made by a job",
		"deployment-99": "does not exist",
		"commit-abc":    "not a GitLab deployment",
	} {
		if _, err := fl.Release(ctx, key); err == nil || !strings.Contains(err.Error(), want) || fault.KindOf(err) != fault.Invalid {
			t.Errorf("%s: %v, want an invalid-input error saying %q", key, err, want)
		}
	}
	// Only the release fetched is left, in a directory of its own under Dir.
	if entries, _ := os.ReadDir(fl.Dir); len(entries) != 1 || filepath.Join(fl.Dir, entries[0].Name()) != rel.Dir {
		t.Fatalf("release directories %v", entries)
	}
}
