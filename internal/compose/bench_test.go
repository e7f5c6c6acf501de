package compose

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkLoad50 loads and converts a 50-service compose file, the size of the apply benchmark's stack.
func BenchmarkLoad50(b *testing.B) {
	dir := b.TempDir()
	var sb strings.Builder
	sb.WriteString("services:\n")
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&sb, "  s%d:\n    image: registry.example.com/svc:1\n    environment: {A: b}\n    deploy: {endpoint_mode: dnsrr, replicas: 2}\n    networks: [n]\n", i)
	}
	sb.WriteString("networks: {n: {}}\n")
	p := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(context.Background(), Options{Files: []string{p}, Stack: "bench", Env: []string{}}); err != nil {
			b.Fatal(err)
		}
	}
}
