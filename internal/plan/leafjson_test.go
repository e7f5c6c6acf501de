package plan

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
)

// leafJSON writes every leaf as encoding/json does: the comparison of observed and wanted specs, and the
// engine defaults (JSON texts), depend on it.
func TestLeafJSONIsJSONMarshal(t *testing.T) {
	leaves := []any{true, false, 0.0, 1.0, -5.0, 3.5, 1e14, 1e15, 1e21, -1e300, math.SmallestNonzeroFloat64, 123456789012345.0,
		"", "pause", "stop-first", `a"b`, `a\b`, "a<b>&c", "tab\t", "\x7f", "é", "\u2028", "日本", "x y z", "0.0.0.0:8080/tcp",
		[]any{"a", 1.0}, map[string]any{"k": "v"}, nil}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		leaves = append(leaves, string(b), float64(r.Int64N(1<<53)-1<<52), r.NormFloat64()*1e6)
	}
	for _, v := range leaves {
		want, _ := json.Marshal(v)
		if got := leafJSON(v); got != string(want) {
			t.Fatalf("leafJSON(%#v) = %s, json.Marshal %s", v, got, want)
		}
	}
}
