package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/sabeiro/sawmill/internal/pipeline"
)

func (a *app) initCmd() *cobra.Command {
	var repo string
	var force bool
	o := pipeline.InitOptions{}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write the job templates (pipelines/*.yml), pipegen.yaml and the parent .gitlab-ci.yml into a repository",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if st, err := os.Stat(repo); err != nil || !st.IsDir() {
				return fmt.Errorf("--repo %s: not a directory", repo)
			}
			if o.Registry == "" {
				o.Registry = a.getenv("CI_REGISTRY_IMAGE")
			}
			if o.Registry == "" {
				o.Registry = "registry.gitlab.com/group/project"
			}
			if o.Image == "" {
				o.Image = defaultToolImage()
			}
			if o.Signing == "" {
				// Keyless needs the public Sigstore, which trusts GitLab.com's tokens only; a
				// self-managed instance signs with a key unless it runs its own Sigstore.
				o.Signing = "key"
				if u := a.getenv("CI_SERVER_URL"); u == "" || u == "https://gitlab.com" {
					o.Signing = "keyless"
				}
				a.log.Info("signing mode", "mode", o.Signing, "why", "CI_SERVER_URL="+a.getenv("CI_SERVER_URL")+" (keyless on GitLab.com, key elsewhere; --signing to choose)")
			}
			if o.Signing != "key" && o.Signing != "keyless" {
				return usageError{fmt.Errorf("--signing %q: want key or keyless", o.Signing)}
			}
			if o.SignIn != "child" && o.SignIn != "parent" {
				return usageError{fmt.Errorf("--signing-pipeline %q: want child or parent", o.SignIn)}
			}
			files, err := pipeline.InitFiles("pipelines", o)
			if err != nil {
				return err
			}
			// Decide everything before writing anything.
			var write []pipeline.File
			for _, f := range files {
				dst := filepath.Join(repo, filepath.FromSlash(f.Path))
				_, err := os.Stat(dst)
				switch {
				case err == nil && !force:
					a.log.Info("exists, kept (use --force to overwrite)", "file", f.Path)
					continue
				case err != nil && !errors.Is(err, fs.ErrNotExist):
					return fmt.Errorf("%s: %w", dst, err)
				}
				write = append(write, f)
			}
			for _, f := range write {
				dst := filepath.Join(repo, filepath.FromSlash(f.Path))
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return fmt.Errorf("create %s: %w", filepath.Dir(dst), err)
				}
				if err := writeFileAtomic(dst, f.Data, 0o644); err != nil {
					return err
				}
				a.log.Info("wrote", "file", f.Path)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&repo, "repo", ".", "repository root")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing files")
	cmd.Flags().StringVar(&o.Registry, "registry", "", "registry path of the images (default $CI_REGISTRY_IMAGE)")
	cmd.Flags().StringVar(&o.DefaultBranch, "default-branch", "main", "default branch")
	cmd.Flags().StringVar(&o.Image, "image", "", "image of the generate, policy and release jobs, with pipegen, the agent, git and sh (default "+defaultToolImage()+")")
	cmd.Flags().BoolVar(&o.SecurityTemplates, "security-templates", true, "include GitLab's SAST, Secret Detection and Dependency Scanning templates in .gitlab-ci.yml (they are fetched from the GitLab instance)")
	cmd.Flags().StringVar(&o.Signing, "signing", "", "key or keyless (default: keyless on GitLab.com, i.e. CI_SERVER_URL unset or https://gitlab.com; key elsewhere)")
	cmd.Flags().StringVar(&o.SignIn, "signing-pipeline", "child", "where images are signed: child (the generated pipeline's sign jobs) or parent (one sign job in .gitlab-ci.yml, after the build pipeline: keyless signing on GitLab versions whose child-pipeline ID tokens lack Fulcio's claims)")
	cmd.Flags().StringVar(&o.Command, "command", "pipegen", "how jobs run pipegen")
	cmd.Flags().StringVar(&o.Agent, "agent", "agent", "how jobs run the policy check")
	return cmd
}

// ToolImageRepository is where this repository's pipeline publishes the image with pipegen
// and the agent (images/sawmill-tools).
const ToolImageRepository = "registry.gitlab.com/sabeiro/sawmill/sawmill-tools"

// toolCommit is the commit this pipegen was built from when the build says so
// (-ldflags "-X main.toolCommit=<sha>", as images/sawmill-tools does: its build has no .git).
var toolCommit string

// defaultToolImage is the tools image of the commit this pipegen was built from (every image
// of a published release is tagged with the release's commit), else the main branch's channel.
func defaultToolImage() string {
	if len(toolCommit) == 40 {
		return ToolImageRepository + ":" + toolCommit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) == 40 {
				return ToolImageRepository + ":" + s.Value
			}
		}
	}
	return ToolImageRepository + ":release-main"
}
