package compose

import (
	"regexp"
	"slices"
	"testing"
)

// eachWord finds the words the regular expression it replaces finds, in the same order, on any input (the
// cache key refuses the cache when a compose file spells a refused word or a variable's name).
func FuzzEachWord(f *testing.F) {
	for _, s := range []string{
		"services:\n  web:\n    image: ${IMAGE:-nginx}\n    env_file: .env\n",
		"1abc _x9 9_ a-b é\xffz __ include:extends",
		"",
	} {
		f.Add([]byte(s))
	}
	re := regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*`)
	f.Fuzz(func(t *testing.T, b []byte) {
		var got [][]byte
		if !eachWord(b, func(w []byte) bool { got = append(got, w); return true }) {
			t.Fatal("eachWord stopped without being asked")
		}
		want := re.FindAll(b, -1)
		if !slices.EqualFunc(got, want, func(x, y []byte) bool { return string(x) == string(y) }) {
			t.Fatalf("%q: words %q, the expression finds %q", b, got, want)
		}
		// Stopping: the first word only.
		n := 0
		eachWord(b, func([]byte) bool { n++; return false })
		if n != min(1, len(want)) {
			t.Fatalf("%q: %d calls after a stop", b, n)
		}
	})
}
