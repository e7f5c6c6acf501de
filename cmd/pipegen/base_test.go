package main

import (
	"context"
	"encoding/json"
	"github.com/sabeiro/sawmill/internal/manifest"
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/pipeline"
	"github.com/sabeiro/sawmill/internal/release"
	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

// publishRecord publishes a channel record for commit with the given image digests, as a
// release job would, and returns the record's digest.
func publishRecord(t *testing.T, regPath, ref, commit string, digests map[string]string) string {
	t.Helper()
	rel := release.Release{SchemaVersion: manifest.SchemaVersion, Commit: commit, Ref: ref, Registry: regPath,
		Channel: release.ChannelTag(ref), Images: map[string]release.Image{}, Pipeline: release.Pipeline{ID: 7}}
	for n, d := range digests {
		rel.Images[n] = release.Image{Repository: regPath + "/" + n, Tag: commit, Digest: d, Rebuilt: true}
	}
	b, err := json.Marshal(rel)
	if err != nil {
		t.Fatal(err)
	}
	d, err := (release.OCI{}).WriteRecord(context.Background(), release.RecordRef(regPath, rel.Channel), b, commit)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func digestOf(s string) string { return "sha256:" + strings.Repeat(s, 64)[:64] }

// The change base is the commit of the last release on the ref's channel (not the previous
// push), else of the default branch's, else none; plan says which and why.
func TestChangeBaseFromReleaseRecords(t *testing.T) {
	regPath := testenv.Registry(t) + "/sawmill/platform"
	r := newGitRepo(t, testLayout)
	c0 := r.Git("rev-parse", "HEAD")
	env := func(kv ...string) map[string]string {
		m := map[string]string{"PIPEGEN_REGISTRY": regPath}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	plan := func(e map[string]string, args ...string) string {
		t.Helper()
		res := pipegen(t, e, append([]string{"plan", "--repo", r.Dir}, args...)...)
		if res.code != 0 {
			t.Fatalf("plan: exit %d\n%s", res.code, res.stderr)
		}
		return res.stdout
	}
	generate := func(e map[string]string) map[string]any {
		t.Helper()
		res := pipegen(t, e, "generate", "--repo", r.Dir)
		if res.code != 0 {
			t.Fatalf("generate: exit %d\n%s", res.code, res.stderr)
		}
		return jobs(t, []byte(res.stdout))
	}
	action := func(out, image string) string {
		for l := range strings.SplitSeq(out, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == image {
				return strings.Join(f[1:], " ")
			}
		}
		return ""
	}

	// No release anywhere: everything is rebuilt, and plan says why.
	out := plan(env("CI_COMMIT_REF_NAME", "main"))
	if !strings.HasPrefix(out, "base: none (rebuild all: release-main has no release)\n") || !strings.HasPrefix(action(out, "solo"), "rebuilt") {
		t.Errorf("no release:\n%s", out)
	}

	// main released c0. Pipeline A (c1, app changed) failed: nothing published. Pipeline B
	// (c2, solo changed) must rebuild app too: its base is c0, not c1 (CI_COMMIT_BEFORE_SHA).
	record0 := publishRecord(t, regPath, "main", c0, map[string]string{"base": digestOf("1"), "app": digestOf("2"), "solo": digestOf("3")})
	r.Write(map[string]string{"images/app/v": "a"})
	c1 := r.Commit("A: app")
	r.Write(map[string]string{"images/solo/v": "b"})
	r.Commit("B: solo")
	e := env("CI_COMMIT_REF_NAME", "main", "CI_COMMIT_BEFORE_SHA", c1)
	out = plan(e)
	if !strings.HasPrefix(out, "base: "+c0+" (last release on release-main: commit "+c0[:12]+" (pipeline 7))\n") ||
		!strings.HasPrefix(action(out, "app"), "rebuilt changed images/app/v") || !strings.HasPrefix(action(out, "solo"), "rebuilt") ||
		action(out, "base") != "reused unchanged" {
		t.Errorf("after a failed pipeline:\n%s", out)
	}
	doc := generate(e)
	vars := doc["variables"].(map[string]any)
	if vars["BASE_DIGEST"] != digestOf("1") || vars["SAWMILL_CHANNEL_RECORD"] != record0 || vars["SAWMILL_BASE_COMMIT"] != c0 || vars["APP_DIGEST"] != nil {
		t.Errorf("pipeline variables: %v", vars)
	}
	if args := doc["build:app"].(map[string]any)["variables"].(map[string]any)["SAWMILL_BUILD_ARGS"]; args != "REGISTRY="+regPath+"\nBASE_IMAGE="+regPath+"/base@${BASE_DIGEST}" {
		t.Errorf("build:app builds FROM %q, want the base digest generate resolved", args)
	}

	// A force-pushed branch: its last release's commit is not in the clone. The base falls
	// back to main's release; the compare-and-swap still expects the branch's record.
	r.Git("checkout", "-q", "-b", "feature")
	recordF := publishRecord(t, regPath, "feature", strings.Repeat("ab", 20), map[string]string{"base": digestOf("4"), "app": digestOf("5"), "solo": digestOf("6")})
	e = env("CI_COMMIT_REF_NAME", "feature", "CI_COMMIT_BEFORE_SHA", strings.Repeat("ab", 20))
	out = plan(e)
	if !strings.Contains(out, "base: "+c0+" (last release on release-main: commit "+c0[:12]+" (pipeline 7); the last release of release-feature (commit abababababab) is not in the clone (force push?))") {
		t.Errorf("force push:\n%s", out)
	}
	if vars := generate(e)["variables"].(map[string]any); vars["SAWMILL_CHANNEL_RECORD"] != recordF || vars["BASE_DIGEST"] != digestOf("1") {
		t.Errorf("force push variables: %v", vars)
	}

	// A new branch (all-zero before-SHA) and a tag: main's release, not everything.
	for _, ref := range []string{"feature-2", "v1.0.0"} {
		e = env("CI_COMMIT_REF_NAME", ref, "CI_COMMIT_BEFORE_SHA", "0000000000000000000000000000000000000000")
		out = plan(e)
		if !strings.Contains(out, "base: "+c0+" (last release on release-main") || !strings.Contains(out, release.ChannelTag(ref)+" has no release") ||
			action(out, "base") != "reused unchanged" {
			t.Errorf("%s:\n%s", ref, out)
		}
		doc := generate(e)
		if vars := doc["variables"].(map[string]any); vars["SAWMILL_CHANNEL_RECORD"] != "none" || vars["BASE_DIGEST"] != digestOf("1") {
			t.Errorf("%s: variables %v, want no record of its own and main's base digest", ref, vars)
		}
		// The build falls back to main's channel too: FROM the digest main released.
		if args := doc["build:app"].(map[string]any)["variables"].(map[string]any)["SAWMILL_BUILD_ARGS"]; !strings.Contains(args.(string), "BASE_IMAGE="+regPath+"/base@${BASE_DIGEST}") {
			t.Errorf("%s: build:app args %q", ref, args)
		}
	}

	// A merge request pipeline: the target's release is the base; it never publishes or deploys.
	e = env("CI_COMMIT_REF_NAME", "feature", "CI_PIPELINE_SOURCE", "merge_request_event",
		"CI_MERGE_REQUEST_IID", "3", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "feature")
	doc = generate(e)
	if doc["release"].(map[string]any)["variables"].(map[string]any)["SAWMILL_PUBLISH"] != "false" || doc["deploy:staging"] != nil || doc["deploy:production"] != nil {
		t.Errorf("merge request pipeline publishes or deploys: %v", doc["release"])
	}

	// An image the base release does not have is rebuilt, with its dependents.
	r.Write(map[string]string{"images/extra/Dockerfile": "FROM scratch\n"})
	r.Commit("extra")
	out = plan(env("CI_COMMIT_REF_NAME", "feature-3"))
	if action(out, "extra") != "rebuilt not in the release of "+c0[:12] {
		t.Errorf("new image:\n%s", out)
	}

	// An unreachable registry is an error, not a silent rebuild or reuse.
	res := pipegen(t, env("CI_COMMIT_REF_NAME", "main", "PIPEGEN_REGISTRY", "127.0.0.1:1/p"), "plan", "--repo", r.Dir)
	if res.code != 1 || !strings.Contains(res.stderr, "change base:") || !strings.Contains(res.stderr, "--base") {
		t.Errorf("unreachable registry: %+v", res)
	}
}

func TestRecordRepositoryNamesAgree(t *testing.T) {
	if pipeline.RecordRepository != release.RecordRepository {
		t.Errorf("pipeline.RecordRepository %q != release.RecordRepository %q", pipeline.RecordRepository, release.RecordRepository)
	}
}
