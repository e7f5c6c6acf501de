package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sabeiro/sawmill/internal/discover"
	"github.com/sabeiro/sawmill/internal/pipeline"
	"github.com/sabeiro/sawmill/internal/release"
)

// recordReader reads channel records (release.OCI in production).
type recordReader interface {
	ReadRecord(ctx context.Context, ref string) (release.Record, error)
}

// basePick is the outcome of choosing the change base.
type basePick struct {
	base   string         // commit to diff against; "" rebuilds everything
	why    string         // how base was chosen (or why there is none), for plan and the log
	reuse  pipeline.Reuse // where reused images come from
	force  map[string]string
	legacy bool // --base / PIPEGEN_BASE: no record read; reused images are resolved by the release job
}

// refInfo is what the pipeline runs for, from GitLab's predefined variables or git.
type refInfo struct {
	ref          string // branch or tag (CI_COMMIT_REF_NAME); unset with an explicit base, which reads no channel
	fallback     string // the branch whose release is the fallback: the MR's target, else default_branch
	mergeRequest bool   // a merge request pipeline: never publishes, never deploys
}

// refInfo: the ref is --ref, else CI_COMMIT_REF_NAME, else (askGit) the checked-out branch.
func (a *app) refInfo(ctx context.Context, git discover.Git, cfg pipeline.Config, flagRef string, askGit bool) refInfo {
	ri := refInfo{ref: flagRef, fallback: cfg.DefaultBranch}
	if ri.ref == "" {
		ri.ref = a.getenv("CI_COMMIT_REF_NAME")
	}
	if ri.ref == "" && askGit {
		ri.ref = git.Branch(ctx)
	}
	if a.getenv("CI_PIPELINE_SOURCE") == "merge_request_event" || a.getenv("CI_MERGE_REQUEST_IID") != "" {
		ri.mergeRequest = true
		if t := a.getenv("CI_MERGE_REQUEST_TARGET_BRANCH_NAME"); t != "" {
			ri.fallback = t
		}
		if s := a.getenv("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"); s != "" && flagRef == "" {
			ri.ref = s
		}
	}
	return ri
}

// pickBase chooses the change base: the commit of the last release published on the ref's
// channel, else the commit of the fallback branch's last release (a new branch, a tag, a
// merge request, a ref whose last release a force push removed from the clone), else none
// (rebuild everything). Reused images take their digests from that same release, so the diff
// covers exactly what differs between the images reused and the commit built.
func pickBase(ctx context.Context, git discover.Git, reg recordReader, cfg pipeline.Config, ri refInfo) (basePick, error) {
	var notes []string
	own := ""
	if ri.ref != "" {
		own = release.ChannelTag(ri.ref)
	}
	channels := []string{}
	if ri.mergeRequest {
		// Merge request pipelines (merged results included) diff against the target's release.
		channels = append(channels, release.ChannelTag(ri.fallback))
		if own != "" && own != channels[0] {
			channels = append(channels, own)
		}
	} else {
		if own != "" {
			channels = append(channels, own)
		}
		if fb := release.ChannelTag(ri.fallback); ri.fallback != "" && fb != own {
			channels = append(channels, fb)
		}
	}
	p := basePick{reuse: pipeline.Reuse{Expect: "", Digests: map[string]string{}}}
	for _, ch := range channels {
		ref := release.RecordRef(cfg.Registry, ch)
		rec, err := reg.ReadRecord(ctx, ref)
		if errors.Is(err, release.ErrNotFound) {
			notes = append(notes, ch+" has no release")
			continue
		}
		if err != nil {
			return basePick{}, fmt.Errorf("change base: %w (pass --base REV to choose the base without the registry)", err)
		}
		if ch == own && !ri.mergeRequest {
			p.reuse.Expect = rec.Digest
		}
		commit := rec.Release.Commit
		if !git.HasCommit(ctx, commit) {
			notes = append(notes, fmt.Sprintf("the last release of %s (commit %s) is not in the clone (force push?)", ch, short(commit)))
			continue
		}
		p.base = commit
		p.why = fmt.Sprintf("last release on %s: commit %s (pipeline %d)", ch, short(commit), rec.Release.Pipeline.ID)
		if len(notes) > 0 {
			p.why += "; " + strings.Join(notes, "; ")
		}
		p.reuse.Commit, p.reuse.Channel = commit, ch
		p.force = map[string]string{}
		for n, img := range rec.Release.Images {
			p.reuse.Digests[n] = img.Digest
		}
		return p, nil
	}
	if len(notes) == 0 {
		notes = append(notes, "no ref and no default branch")
	}
	p.why = "rebuild all: " + strings.Join(notes, "; ")
	return p, nil
}

// forceMissing marks the images the base release does not contain for rebuilding.
func forceMissing(p *basePick, repo *discover.Repo) {
	if p.legacy || p.base == "" {
		return
	}
	for _, im := range repo.Images {
		if _, ok := p.reuse.Digests[im.Name]; !ok {
			p.force[im.Name] = "not in the release of " + short(p.reuse.Commit)
		}
	}
	// Digests of images the repository no longer has are not passed on.
	var gone []string
	for n := range p.reuse.Digests {
		if _, ok := repo.Image(n); !ok {
			gone = append(gone, n)
		}
	}
	sort.Strings(gone)
	for _, n := range gone {
		delete(p.reuse.Digests, n)
	}
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
