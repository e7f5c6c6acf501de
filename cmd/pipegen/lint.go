package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sabeiro/sawmill/internal/cilint"
)

func (a *app) lintCmd() *cobra.Command {
	var url, project, ref, schema, tokenEnv string
	cmd := &cobra.Command{
		Use:   "lint [FILE]",
		Short: "Check a GitLab CI file against GitLab's JSON schema and, with --gitlab-url and --project, the CI Lint API",
		Long: `Check a GitLab CI file (default .gitlab-ci.yml) offline against GitLab's JSON schema.
With --gitlab-url (or CI_SERVER_URL) and --project (or CI_PROJECT_ID) it also sends the file to
the project's CI Lint API (POST /projects/:id/ci/lint). The token is read from the environment
variable named by --token-env (default PIPEGEN_GITLAB_TOKEN, else GITLAB_TOKEN); it is never
printed and cannot be given on the command line.`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			file := ".gitlab-ci.yml"
			if len(argv) == 1 {
				file = argv[0]
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("lint: %w", err)
			}
			var s *cilint.Schema
			if schema != "" {
				raw, err := os.ReadFile(schema)
				if err != nil {
					return fmt.Errorf("--schema: %w", err)
				}
				if s, err = cilint.Compile(raw); err != nil {
					return fmt.Errorf("--schema %s: %w", schema, err)
				}
			} else if s, err = cilint.Embedded(); err != nil {
				return err
			}
			if err := s.Validate(data); err != nil {
				return fmt.Errorf("%s %w: %w", file, errInvalid, err)
			}
			fmt.Fprintf(a.stdout, "%s: valid (GitLab CI JSON schema)\n", file)

			if url == "" {
				url = a.getenv("CI_SERVER_URL")
			}
			if project == "" {
				project = a.getenv("CI_PROJECT_ID")
			}
			token := a.getenv(tokenEnv)
			if token == "" && tokenEnv == "PIPEGEN_GITLAB_TOKEN" {
				token = a.getenv("GITLAB_TOKEN")
			}
			if url == "" && project == "" {
				return nil
			}
			if url == "" || project == "" || token == "" {
				return usageError{fmt.Errorf("the CI Lint API needs --gitlab-url, --project and a token in $%s (missing: %s)", tokenEnv, missing(url, project, token))}
			}
			remote, err := cilint.NewRemote(url, token, project)
			if err != nil {
				return err
			}
			remote.Ref = ref
			res, err := remote.Lint(data)
			if err != nil {
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintf(a.stdout, "%s: warning (GitLab CI Lint API): %s\n", file, w)
			}
			if !res.Valid {
				return fmt.Errorf("%s %w (GitLab CI Lint API):\n  %s", file, errInvalid, strings.Join(res.Errors, "\n  "))
			}
			fmt.Fprintf(a.stdout, "%s: valid (GitLab CI Lint API, project %s)\n", file, project)
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "gitlab-url", "", "GitLab base URL, e.g. https://gitlab.com (default $CI_SERVER_URL)")
	cmd.Flags().StringVar(&project, "project", "", "project ID or path for the CI Lint API (default $CI_PROJECT_ID)")
	cmd.Flags().StringVar(&ref, "ref", "", "with the API: simulate pipeline creation (dry run) on this branch or tag")
	cmd.Flags().StringVar(&tokenEnv, "token-env", "PIPEGEN_GITLAB_TOKEN", "environment variable holding the GitLab token")
	cmd.Flags().StringVar(&schema, "schema", "", "JSON schema file to use instead of the embedded GitLab CI schema")
	return cmd
}

func missing(url, project, token string) string {
	var m []string
	if url == "" {
		m = append(m, "--gitlab-url")
	}
	if project == "" {
		m = append(m, "--project")
	}
	if token == "" {
		m = append(m, "token")
	}
	return strings.Join(m, ", ")
}
