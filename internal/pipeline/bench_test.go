package pipeline

import (
	"fmt"
	"testing"

	"github.com/sabeiro/sawmill/internal/discover"
)

// BenchmarkBuildRender builds and renders the child pipeline of 1,000 images (every tenth a
// base of the next nine) and 20 stacks, everything rebuilt.
func BenchmarkBuildRender(b *testing.B) {
	repo := &discover.Repo{}
	for i := range 1000 {
		im := discover.Image{Name: fmt.Sprintf("img%04d", i)}
		im.Dir = "images/" + im.Name
		im.Dockerfile = im.Dir + "/Dockerfile"
		if i%10 != 0 {
			im.DependsOn = []string{fmt.Sprintf("img%04d", i/10*10)}
		}
		repo.Images = append(repo.Images, im)
	}
	for i := range 20 {
		n := fmt.Sprintf("stack%02d", i)
		repo.Stacks = append(repo.Stacks, discover.Stack{Name: n, Dir: "stacks/" + n, File: "stacks/" + n + "/compose.yaml",
			Overrides: []discover.Override{{Env: "production", File: "stacks/" + n + "/compose.production.yaml"}}})
	}
	cfg := Defaults()
	cfg.Registry = "registry.gitlab.com/bench/mono"
	cfg.Environments = []Environment{{Name: "staging", Tier: "staging", When: "automatic"}, {Name: "production", Tier: "production"}}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	decisions := discover.Plan(repo, discover.Diff{All: true})
	b.ReportAllocs()
	var size int
	for b.Loop() {
		p, err := Build(repo, decisions, cfg)
		if err != nil {
			b.Fatal(err)
		}
		size = len(p.Bytes())
	}
	b.ReportMetric(float64(size), "bytes/pipeline")
}
