package compose

import (
	"context"
	"os"
	"testing"
)

func BenchmarkLoadFile(b *testing.B) {
	p := os.Getenv("LOADFILE")
	if p == "" {
		b.Skip()
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(context.Background(), Options{Files: []string{p}, Env: []string{}, WithoutValues: true}); err != nil {
			b.Fatal(err)
		}
	}
}
