package compose

import (
	"bytes"
	"strings"

	interp "github.com/compose-spec/compose-go/v2/interpolation"
	"github.com/compose-spec/compose-go/v2/tree"
)

// usedCasts returns the entries of compose-go's interpolation casts (loader.Options.Interpolate.TypeCastMapping:
// "services.*.privileged" to bool, "services.*.deploy.replicas" to int, ...) that can apply to the compose files
// whose contents are texts: those whose last named key occurs somewhere in them. compose-go matches every string
// value of the document against every entry (tree.Path.Matches, which splits both paths on each call: a third
// of its load's path matching), and an entry applies only to a value under its key, which a file can only hold
// if it spells the key. So the result casts exactly the values the whole table casts.
//
// It returns all unchanged when another file may come in (include, extends) or when a text has a backslash (a
// double-quoted key may spell a name with escapes).
func usedCasts(all map[tree.Path]interp.Cast, texts [][]byte) map[tree.Path]interp.Cast {
	for _, t := range texts {
		if bytes.IndexByte(t, '\\') >= 0 || bytes.Contains(t, []byte("include")) || bytes.Contains(t, []byte("extends")) {
			return all
		}
	}
	out := make(map[tree.Path]interp.Cast, len(all))
	for p, cast := range all {
		k := lastKey(p)
		if k == "" {
			out[p] = cast
			continue
		}
		for _, t := range texts {
			if bytes.Contains(t, []byte(k)) {
				out[p] = cast
				break
			}
		}
	}
	return out
}

// lastKey is the last part of p that names a key (not * or []); "" if none does.
func lastKey(p tree.Path) string {
	parts := strings.Split(string(p), ".")
	for i := len(parts) - 1; i >= 0; i-- {
		if parts[i] != tree.PathMatchAll && parts[i] != tree.PathMatchList {
			return strings.ReplaceAll(parts[i], "👻", ".")
		}
	}
	return ""
}
