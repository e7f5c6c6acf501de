package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/discover"
	"github.com/sabeiro/sawmill/internal/pipeline"
	"github.com/sabeiro/sawmill/internal/release"
)

type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	log            *slog.Logger
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "pipegen",
		Short:         "Generate the GitLab CI child pipeline of a Sawmill repository",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.generateCmd(), a.planCmd(), a.lintCmd(), a.initCmd(), a.releaseCmd())
	return root
}

// args wraps a cobra.PositionalArgs so its errors are usage errors.
func args(f cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := f(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// repoFlags are the flags shared by the commands that read a repository.
type repoFlags struct {
	repo   string
	config string
}

func (r *repoFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&r.repo, "repo", ".", "repository root")
	fs.StringVar(&r.config, "config", "", "configuration file (default <repo>/pipegen.yaml)")
	fs.String("registry", "", "registry path of the images (pipegen.yaml registry)")
	fs.String("default-branch", "", "default branch (pipegen.yaml default_branch)")
	fs.String("builder", "", "buildah or buildkit (pipegen.yaml builder)")
}

// loadConfig reads pipegen.yaml with viper: defaults < file < PIPEGEN_* environment < flags.
// Unknown keys are errors naming the key.
func (a *app) loadConfig(rf *repoFlags, fs *pflag.FlagSet) (pipeline.Config, string, error) {
	root, err := filepath.Abs(rf.repo)
	if err != nil {
		return pipeline.Config{}, "", fmt.Errorf("--repo %s: %w", rf.repo, err)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return pipeline.Config{}, "", fmt.Errorf("--repo %s: not a directory", rf.repo)
	}
	file := rf.config
	if file == "" {
		file = filepath.Join(root, "pipegen.yaml")
	}
	v := viper.New()
	v.SetConfigFile(file)
	v.SetConfigType("yaml")
	v.SetEnvPrefix("PIPEGEN")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	d := pipeline.Defaults()
	for k, val := range map[string]any{
		"registry": d.Registry, "default_branch": d.DefaultBranch, "builder": d.Builder,
		"scanners": d.Scanners, "severity_threshold": d.SeverityThreshold, "templates": d.Templates, "component": "", "max_needs": d.MaxNeeds,
		"signing.mode": d.Signing.Mode, "signing.key_variable": d.Signing.KeyVariable,
		"signing.issuer": d.Signing.Issuer, "signing.format": d.Signing.Format, "signing.pipeline": d.Signing.Pipeline,
		"signing.signing_config": "", "signing.trusted_root": "", "signing.fulcio_url": "", "signing.rekor_url": "",
		"tool.image": d.Tool.Image, "tool.command": d.Tool.Command, "tool.agent": d.Tool.Agent,
	} {
		v.SetDefault(k, val)
	}
	// viper's AutomaticEnv reads os.Getenv; bind explicitly through getenv instead so the
	// environment is an input like any other.
	for _, k := range []string{"registry", "default_branch", "builder", "templates", "component", "max_needs", "severity_threshold",
		"signing.mode", "signing.key_variable", "signing.issuer", "signing.format", "signing.pipeline",
		"signing.signing_config", "signing.trusted_root", "signing.fulcio_url", "signing.rekor_url",
		"tool.image", "tool.command", "tool.agent"} {
		env := "PIPEGEN_" + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
		if val := a.getenv(env); val != "" {
			v.Set(k, val)
		}
	}
	if val := a.getenv("PIPEGEN_SCANNERS"); val != "" {
		v.Set("scanners", strings.Fields(strings.ReplaceAll(val, ",", " ")))
	}
	for flag, key := range map[string]string{"registry": "registry", "default-branch": "default_branch", "builder": "builder"} {
		if f := fs.Lookup(flag); f != nil && f.Changed {
			v.Set(key, f.Value.String())
		}
	}
	if err := v.ReadInConfig(); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return pipeline.Config{}, "", fmt.Errorf("%s: no configuration file (run `pipegen init`)", file)
		}
		return pipeline.Config{}, "", fmt.Errorf("%s: %w", file, err)
	}
	var cfg pipeline.Config
	if err := v.UnmarshalExact(&cfg); err != nil {
		return pipeline.Config{}, "", fmt.Errorf("%s: %w", file, err)
	}
	if err := cfg.Validate(); err != nil {
		return pipeline.Config{}, "", fmt.Errorf("%s: %w", file, err)
	}
	return cfg, root, nil
}

// planned is the result of discovery and change detection.
type planned struct {
	root      string
	cfg       pipeline.Config
	repo      *discover.Repo
	diff      discover.Diff
	decisions []discover.Decision
	pick      basePick
	ref       refInfo
}

// options are the pipeline.Options of a plan.
func (p *planned) options() pipeline.Options {
	o := pipeline.Options{MergeRequest: p.ref.mergeRequest}
	if !p.pick.legacy {
		o.Reuse = p.pick.reuse
		o.Reuse.Known = true
	}
	return o
}

// plan runs discovery and change detection for generate and plan. The base is --base or
// PIPEGEN_BASE when given (no registry is read; the release job resolves reused images from
// the channel tags), else the commit of the last release on the ref's channel, else on the
// fallback branch's, else none (see pickBase).
func (a *app) plan(ctx context.Context, rf *repoFlags, fs *pflag.FlagSet, base, ref string) (*planned, error) {
	cfg, root, err := a.loadConfig(rf, fs)
	if err != nil {
		return nil, err
	}
	git := discover.Git{Dir: root}
	// The layout scan runs beside git; a git error is reported first, and the registry is read
	// only once the repository checked out (git, layout, configuration).
	var repo *discover.Repo
	var scanErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		repo, scanErr = discover.Scan(root, discover.Options{Registries: []string{cfg.Registry}})
	}()
	var pick basePick
	explicit := base != "" || a.getenv("PIPEGEN_BASE") != ""
	// With an explicit base no channel is read: the ref is not needed, so git is not asked for the
	// branch (one git process less beside the scan).
	ri := a.refInfo(ctx, git, cfg, ref, !explicit)
	switch {
	case explicit:
		why := "--base"
		if base == "" {
			base, why = a.getenv("PIPEGEN_BASE"), "PIPEGEN_BASE"
		}
		pick = basePick{base: base, why: why, legacy: true}
		if strings.Trim(base, "0") == "" {
			pick.base, pick.why = "", "rebuild all: "+why+" is all zeros"
		}
	default:
		// The repository's own errors (git, layout) come before the registry's.
		if err := git.Check(ctx); err != nil {
			<-done
			return nil, err
		}
		if <-done; scanErr != nil {
			return nil, scanErr
		}
		if err := pipeline.Check(repo, cfg); err != nil {
			return nil, err
		}
		if pick, err = pickBase(ctx, git, release.OCI{Keychain: a.keychain()}, cfg, ri); err != nil {
			return nil, err
		}
	}
	diff, err := git.Diff(ctx, pick.base, pick.why)
	<-done
	if err != nil {
		return nil, err
	}
	if scanErr != nil {
		return nil, scanErr
	}
	forceMissing(&pick, repo)
	diff.Force = pick.force
	if diff.All {
		a.log.Info("change detection", "base", "none", "reason", pick.why)
	} else {
		a.log.Info("change detection", "base", diff.Base, "from", pick.why, "changed_paths", len(diff.Paths))
	}
	return &planned{root: root, cfg: cfg, repo: repo, diff: diff, decisions: discover.Plan(repo, diff), pick: pick, ref: ri}, nil
}

// writeFileAtomic writes data to path through a temporary file in the same directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(name, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
