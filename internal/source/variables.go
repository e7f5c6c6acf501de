package source

import (
	"context"
	"fmt"
	"sort"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// Variables returns the project's CI/CD variables that apply to the environment, as KEY=VALUE for compose
// interpolation (a compose secret `environment: NAME` reads NAME from them). A variable scoped to the
// environment wins over one scoped to `*`. File-type and hidden variables (the API does not return hidden
// values) are skipped. Values are never logged.
func (g *GitLab) Variables(ctx context.Context) ([]string, error) {
	exact, wildcard := map[string]string{}, map[string]string{}
	opt := &gitlab.ListProjectVariablesOptions{ListOptions: gitlab.ListOptions{PerPage: 100, Page: 1}}
	for {
		vars, resp, err := g.Client.ProjectVariables.ListVariables(g.Project, opt, gitlab.WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("gitlab: variables of %s: %w", g.Project, err)
		}
		for _, v := range vars {
			if v.VariableType == gitlab.FileVariableType || v.Hidden {
				continue
			}
			switch v.EnvironmentScope {
			case g.Environment:
				exact[v.Key] = v.Value
			case "*", "":
				wildcard[v.Key] = v.Value
			}
		}
		if resp == nil || resp.NextPage == 0 {
			break
		}
		opt.Page = resp.NextPage
	}
	for k, v := range exact {
		wildcard[k] = v
	}
	out := make([]string, 0, len(wildcard))
	for k, v := range wildcard {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}
