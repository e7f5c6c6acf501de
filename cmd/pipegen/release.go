package main

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/sabeiro/sawmill/internal/discover"
	"github.com/sabeiro/sawmill/internal/manifest"
	"github.com/sabeiro/sawmill/internal/pipeline"
	"github.com/sabeiro/sawmill/internal/release"
)

func (a *app) releaseCmd() *cobra.Command {
	var rf repoFlags
	var out, rebuilt, reused, tag, commit, ref, project, pipelineURL, pipelineID string
	var publish bool
	cmd := &cobra.Command{
		Use:   "release",
		Short: "Write the release (release.json and digest-pinned compose files); reuse earlier digests for unchanged images",
		Long: `Write the release directory (docs/release.md): release.json and every stack's compose
files with each repository image pinned to repository:tag@sha256:digest.

Images rebuilt in this pipeline (--rebuilt, default $SAWMILL_REBUILT) take their digest from
the environment variable <IMAGE>_DIGEST (the sign jobs' dotenv reports). Reused images
(--reused, default $SAWMILL_REUSED) are resolved from the registry: the tag
release-<ref slug>, else release-<default branch slug>, unless <IMAGE>_DIGEST is set (generate
sets it from the base release). With --publish (default $SAWMILL_PUBLISH) the channel moves
afterwards: the release-<ref slug> tag of every image, then the channel record
<registry>/sawmill-release:release-<ref slug>, only if the record is still the one
$SAWMILL_CHANNEL_RECORD names (compare-and-swap; "none": there was none).
Registry credentials: $CI_REGISTRY_USER / $CI_REGISTRY_PASSWORD for $CI_REGISTRY, else the
Docker config.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, root, err := a.loadConfig(&rf, cmd.Flags())
			if err != nil {
				return err
			}
			repo, err := discover.Scan(root, discover.Options{Registries: []string{cfg.Registry}})
			if err != nil {
				return err
			}
			env := func(flag, val string, keys ...string) string {
				if cmd.Flags().Changed(flag) {
					return val
				}
				for _, k := range keys {
					if v := a.getenv(k); v != "" {
						return v
					}
				}
				return val
			}
			in := release.Input{
				Root:          root,
				Registry:      cfg.Registry,
				DefaultBranch: cfg.DefaultBranch,
				Commit:        env("commit", commit, "CI_COMMIT_SHA"),
				Ref:           env("ref", ref, "CI_COMMIT_REF_NAME"),
				Project:       env("project", project, "CI_PROJECT_PATH"),
				PipelineURL:   env("pipeline-url", pipelineURL, "CI_PIPELINE_URL"),
				Rebuilt:       strings.Fields(strings.ReplaceAll(env("rebuilt", rebuilt, "SAWMILL_REBUILT"), ",", " ")),
				Reused:        strings.Fields(strings.ReplaceAll(env("reused", reused, "SAWMILL_REUSED"), ",", " ")),
				Stacks:        repo.Stacks,
				Digests:       map[string]string{},
			}
			in.Tag = env("tag", tag, "SAWMILL_TAG", "CI_COMMIT_SHA")
			if id := env("pipeline-id", pipelineID, "CI_PIPELINE_ID"); id != "" {
				if in.PipelineID, err = strconv.ParseInt(id, 10, 64); err != nil {
					return usageError{fmt.Errorf("--pipeline-id %q: not a number", id)}
				}
			}
			if !cmd.Flags().Changed("publish") {
				publish, _ = strconv.ParseBool(a.getenv("SAWMILL_PUBLISH"))
			}
			for _, e := range cfg.Environments {
				in.Environments = append(in.Environments, e.Name)
			}
			for _, n := range append(append([]string(nil), in.Rebuilt...), in.Reused...) {
				if _, ok := repo.Image(n); !ok {
					return fmt.Errorf("image %q: no images/%s in %s", n, n, root)
				}
			}
			for _, n := range in.Rebuilt {
				in.Digests[n] = a.getenv(pipeline.VarName(n) + "_DIGEST")
			}
			// Reused images: the digests generate resolved from the base release.
			for _, n := range in.Reused {
				if d := a.getenv(pipeline.VarName(n) + "_DIGEST"); d != "" {
					in.Digests[n] = d
				}
			}
			in.BaseCommit, in.BaseChannel = a.getenv("SAWMILL_BASE_COMMIT"), a.getenv("SAWMILL_BASE_CHANNEL")
			reg := release.OCI{Keychain: a.keychain()}
			// The channel record this pipeline started from: set by generate, else read now.
			expect, expectKnown := a.getenv("SAWMILL_CHANNEL_RECORD"), true
			switch expect {
			case "":
				expectKnown = false
			case "none":
				expect = ""
			}
			if publish && !expectKnown {
				rec, err := reg.ReadRecord(cmd.Context(), release.RecordRef(cfg.Registry, release.ChannelTag(in.Ref)))
				if err != nil && !errors.Is(err, release.ErrNotFound) {
					return err
				}
				expect = rec.Digest
			}
			rel, files, err := release.Make(cmd.Context(), in, reg)
			if err != nil {
				return err
			}
			if err := release.Write(out, files); err != nil {
				return err
			}
			a.log.Info("release written", "dir", out, "images", len(rel.Images), "stacks", len(rel.Stacks))
			if publish {
				if err := release.Publish(cmd.Context(), rel, files[manifest.FileName], reg, expect); err != nil {
					return err
				}
				a.log.Info("channel moved", "channel", rel.Channel, "record", release.RecordRef(rel.Registry, rel.Channel))
			}
			names := make([]string, 0, len(rel.Images))
			for n := range rel.Images {
				names = append(names, n)
			}
			sort.Strings(names)
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tACTION\tREFERENCE")
			for _, n := range names {
				action := "reused"
				if rel.Images[n].Rebuilt {
					action = "rebuilt"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", n, action, rel.Images[n].Ref)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&out, "out", "release", "release directory (replaced only when complete)")
	f.StringVar(&rebuilt, "rebuilt", "", "images built in this pipeline (default $SAWMILL_REBUILT)")
	f.StringVar(&reused, "reused", "", "images reused from the last release (default $SAWMILL_REUSED)")
	f.StringVar(&tag, "tag", "", "tag of the rebuilt images (default $SAWMILL_TAG, else $CI_COMMIT_SHA)")
	f.StringVar(&commit, "commit", "", "commit (default $CI_COMMIT_SHA)")
	f.StringVar(&ref, "ref", "", "branch or tag (default $CI_COMMIT_REF_NAME)")
	f.StringVar(&project, "project", "", "project path (default $CI_PROJECT_PATH)")
	f.StringVar(&pipelineID, "pipeline-id", "", "pipeline ID (default $CI_PIPELINE_ID)")
	f.StringVar(&pipelineURL, "pipeline-url", "", "pipeline URL (default $CI_PIPELINE_URL)")
	f.BoolVar(&publish, "publish", false, "move the release-<ref> tags to the released digests (default $SAWMILL_PUBLISH)")
	return cmd
}

// keychain authenticates to GitLab's registry with the job's credentials when present.
func (a *app) keychain() authn.Keychain {
	host := a.getenv("CI_REGISTRY")
	if u, err := url.Parse("//" + host); err == nil && u.Host != "" {
		host = u.Host
	}
	return release.BasicKeychain{
		Host:     host,
		Username: a.getenv("CI_REGISTRY_USER"),
		Password: a.getenv("CI_REGISTRY_PASSWORD"),
		Fallback: authn.DefaultKeychain,
	}
}
