package source

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	gitlab "gitlab.com/gitlab-org/api/client-go"
)

// Variables returns the project's CI/CD variables that a release of rel may read in the environment, as
// KEY=VALUE for compose interpolation (a compose secret `environment: NAME` reads NAME from them), with
// GitLab's own rules:
//
//   - scope: a variable applies when its environment scope is the environment's name, or a pattern that
//     matches it (`*` matches any run of characters: `review/*`, `*`); the most specific scope wins (the exact
//     name, then the longest pattern, then `*`);
//   - protected variables only reach a release whose ref is a protected branch or tag, as GitLab gives them
//     only to pipelines of protected refs; the ref is the deployment's (GitLab's record, not release.json's),
//     and whether it is protected is asked of GitLab's branches and tags APIs;
//   - file-type and hidden variables (the API does not return hidden values) are skipped.
//
// Values are never logged.
func (g *GitLab) Variables(ctx context.Context, rel *Release) ([]string, error) {
	type candidate struct{ scope, value string }
	best := map[string]candidate{}
	var protected *bool
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
			scope := v.EnvironmentScope
			if scope == "" {
				scope = "*"
			}
			if !ScopeMatches(scope, g.Environment) {
				continue
			}
			if v.Protected {
				if protected == nil {
					p, err := g.refProtected(ctx, rel)
					if err != nil {
						return nil, err
					}
					protected = &p
				}
				if !*protected {
					continue
				}
			}
			if cur, ok := best[v.Key]; !ok || moreSpecific(scope, cur.scope) {
				best[v.Key] = candidate{scope, v.Value}
			}
		}
		if resp == nil || resp.NextPage == 0 {
			break
		}
		opt.Page = resp.NextPage
	}
	out := make([]string, 0, len(best))
	for _, k := range slices.Sorted(maps.Keys(best)) {
		out = append(out, k+"="+best[k].value)
	}
	return out, nil
}

// ScopeMatches reports whether a variable's environment scope applies to env: equal, or a pattern whose `*`
// matches any run of characters.
func ScopeMatches(scope, env string) bool {
	if !strings.Contains(scope, "*") {
		return scope == env
	}
	parts := strings.Split(scope, "*")
	if !strings.HasPrefix(env, parts[0]) {
		return false
	}
	rest := env[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(rest, p) && len(rest) >= len(p)
		}
		j := strings.Index(rest, p)
		if j < 0 {
			return false
		}
		rest = rest[j+len(p):]
	}
	return true
}

// moreSpecific: an exact scope beats a pattern; of two patterns, the one with more literal characters.
func moreSpecific(a, b string) bool {
	wa, wb := strings.Contains(a, "*"), strings.Contains(b, "*")
	if wa != wb {
		return !wa
	}
	la, lb := len(strings.ReplaceAll(a, "*", "")), len(strings.ReplaceAll(b, "*", ""))
	if la != lb {
		return la > lb
	}
	return a < b
}

// refProtected asks GitLab whether the release's ref is a protected branch, or else a protected tag. A
// release without a GitLab deployment's ref is not protected.
func (g *GitLab) refProtected(ctx context.Context, rel *Release) (bool, error) {
	if rel == nil || rel.Ref == "" {
		return false, nil
	}
	if !rel.Tag {
		b, resp, err := g.Client.Branches.GetBranch(g.Project, rel.Ref, gitlab.WithContext(ctx))
		switch {
		case err == nil:
			return b.Protected, nil
		case resp == nil || resp.StatusCode != http.StatusNotFound:
			return false, fmt.Errorf("gitlab: branch %s of %s: %w", rel.Ref, g.Project, err)
		}
	}
	t, resp, err := g.Client.Tags.GetTag(g.Project, rel.Ref, gitlab.WithContext(ctx))
	switch {
	case err == nil:
		return t.Protected, nil
	case resp != nil && resp.StatusCode == http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("gitlab: tag %s of %s: %w", rel.Ref, g.Project, err)
}
