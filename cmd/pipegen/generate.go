package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sabeiro/sawmill/internal/pipeline"
)

func (a *app) generateCmd() *cobra.Command {
	var rf repoFlags
	var base, out, ref, releaseOut, signEnv string
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Write the child pipeline (YAML) for the changes since the base revision",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.plan(cmd.Context(), &rf, cmd.Flags(), base, ref)
			if err != nil {
				return err
			}
			opt := p.options()
			opt.PipelineID = a.getenv("CI_PIPELINE_ID") // generate runs in the parent pipeline
			pl, err := pipeline.BuildWith(p.repo, p.decisions, p.cfg, opt)
			if err != nil {
				return err
			}
			data := pl.Bytes()
			// signing.pipeline parent: the release pipeline and the parent sign job's variables too,
			// each decided before anything is written.
			var relData, signData []byte
			if p.cfg.Signing.Pipeline == "parent" {
				if releaseOut == "" || signEnv == "" {
					return usageError{fmt.Errorf("signing.pipeline parent: generate needs --release-output and --sign-env (the parent pipeline pipegen init writes passes them)")}
				}
				rel, err := pipeline.BuildRelease(p.repo, p.decisions, p.cfg, opt)
				if err != nil {
					return err
				}
				relData = rel.Bytes()
				for _, v := range pipeline.ParentSignVars(p.repo, p.decisions, p.cfg, opt) {
					signData = fmt.Appendf(signData, "%s=%s\n", v.Name, v.Value)
				}
			}
			rebuilt := 0
			for _, d := range p.decisions {
				if d.Rebuild {
					rebuilt++
				}
			}
			if out == "" || out == "-" {
				_, err = a.stdout.Write(data)
			} else {
				err = writeFileAtomic(out, data, 0o644)
			}
			if err != nil {
				return err
			}
			if relData != nil {
				if err := writeFileAtomic(releaseOut, relData, 0o644); err != nil {
					return err
				}
				if err := writeFileAtomic(signEnv, signData, 0o644); err != nil {
					return err
				}
				a.log.Info("generated the release pipeline and the parent's sign list", "release_output", releaseOut, "sign_env", signEnv)
			}
			a.log.Info("generated", "jobs", len(pl.Jobs), "images_rebuilt", rebuilt, "images_reused", len(p.decisions)-rebuilt, "stacks", len(p.repo.Stacks), "output", outName(out))
			return nil
		},
	}
	rf.add(cmd.Flags())
	cmd.Flags().StringVar(&base, "base", "", baseHelp)
	cmd.Flags().StringVar(&ref, "ref", "", refHelp)
	cmd.Flags().StringVarP(&out, "output", "o", "", "output file (default stdout); written only on success")
	cmd.Flags().StringVar(&releaseOut, "release-output", "", "signing.pipeline parent: file for the release pipeline (release and deploy jobs)")
	cmd.Flags().StringVar(&signEnv, "sign-env", "", "signing.pipeline parent: dotenv file of the parent sign job's variables (SAWMILL_SIGN_IMAGES, signing settings)")
	return cmd
}

func outName(out string) string {
	if out == "" || out == "-" {
		return "stdout"
	}
	return out
}

func (a *app) planCmd() *cobra.Command {
	var rf repoFlags
	var base, ref string
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Print which images are rebuilt or reused, and why",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.plan(cmd.Context(), &rf, cmd.Flags(), base, ref)
			if err != nil {
				return err
			}
			// The same checks as generate (e.g. overrides for unknown environments).
			if _, err := pipeline.BuildWith(p.repo, p.decisions, p.cfg, p.options()); err != nil {
				return err
			}
			if p.diff.All {
				fmt.Fprintf(a.stdout, "base: none (%s)\n", p.pick.why)
			} else {
				fmt.Fprintf(a.stdout, "base: %s (%s)\n", p.diff.Base, p.pick.why)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tACTION\tWHY")
			for _, d := range p.decisions {
				action := "reused"
				if d.Rebuild {
					action = "rebuilt"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Image, action, d.Reason)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd.Flags())
	cmd.Flags().StringVar(&base, "base", "", baseHelp)
	cmd.Flags().StringVar(&ref, "ref", "", refHelp)
	return cmd
}

const (
	baseHelp = "base revision; skips the channel records (default: the commit of the ref's last release, else of the default branch's, else none: rebuild all)"
	refHelp  = "branch or tag the pipeline runs for (default $CI_COMMIT_REF_NAME, else the checked-out branch)"
)
