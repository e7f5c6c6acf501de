package source

import (
	"context"
	"slices"
	"testing"

	"github.com/sabeiro/sawmill/internal/testing/testenv"
)

func TestScopeMatches(t *testing.T) {
	for _, tc := range []struct {
		scope, env string
		want       bool
	}{
		{"*", "production", true},
		{"production", "production", true},
		{"production", "prod", false},
		{"review/*", "review/feature-1", true},
		{"review/*", "review", false},
		{"review/*", "staging", false},
		{"*/eu", "production/eu", true},
		{"prod*uction", "production", true},
		{"prod*uction", "product", false},
	} {
		if got := ScopeMatches(tc.scope, tc.env); got != tc.want {
			t.Errorf("ScopeMatches(%q, %q) = %v", tc.scope, tc.env, got)
		}
	}
}

// A release reads the variables GitLab would give a pipeline of its ref in its environment: the most specific
// scope wins, and protected variables only reach a release of a protected branch or tag.
func TestVariablesFollowGitLabsRules(t *testing.T) {
	f, g := newFake(t)
	g.Environment = "review/feature-1"
	f.SetRefs(map[string]bool{"main": true, "feature-1": false}, map[string]bool{"v1.0.0": true})
	f.SetVariables(
		testenv.Variable{Key: "DOMAIN", Value: "example.test", Scope: "*"},
		testenv.Variable{Key: "DOMAIN", Value: "review.example.test", Scope: "review/*"},
		testenv.Variable{Key: "DOMAIN", Value: "feature-1.example.test", Scope: "review/feature-1"},
		testenv.Variable{Key: "DB_PASSWORD", Value: "review-db", Scope: "review/*"},
		testenv.Variable{Key: "PROD_ONLY", Value: "prod", Scope: "production"},
		testenv.Variable{Key: "DEPLOY_KEY", Value: "protected-key", Scope: "*", Protected: true},
		testenv.Variable{Key: "CERT", Value: "pem", Scope: "*", File: true},
	)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		rel  *Release
		want []string
	}{
		{"unprotected branch", &Release{Ref: "feature-1"}, []string{"DB_PASSWORD=review-db", "DOMAIN=feature-1.example.test"}},
		{"protected branch", &Release{Ref: "main"}, []string{"DB_PASSWORD=review-db", "DEPLOY_KEY=protected-key", "DOMAIN=feature-1.example.test"}},
		{"protected tag", &Release{Ref: "v1.0.0", Tag: true}, []string{"DB_PASSWORD=review-db", "DEPLOY_KEY=protected-key", "DOMAIN=feature-1.example.test"}},
		{"unknown ref", &Release{Ref: "gone"}, []string{"DB_PASSWORD=review-db", "DOMAIN=feature-1.example.test"}},
		{"no GitLab ref", &Release{}, []string{"DB_PASSWORD=review-db", "DOMAIN=feature-1.example.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := g.Variables(ctx, tc.rel)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("variables %v, want %v", got, tc.want)
			}
		})
	}

	// The wildcard scope when nothing more specific exists.
	g.Environment = "review/other"
	got, err := g.Variables(ctx, &Release{Ref: "feature-1"})
	if err != nil || !slices.Contains(got, "DOMAIN=review.example.test") {
		t.Fatalf("review/other: %v %v", got, err)
	}
}
