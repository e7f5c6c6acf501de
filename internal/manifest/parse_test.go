package manifest_test

import (
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/manifest"
)

// Inputs the fuzz target showed to be accepted wrongly or read differently after a round trip.
func TestParseRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		// An environment with no file would reach the loader with an empty file list (manifest_test.go has
		// the empty list).
		"null environment": {`{"schema_version":1,"stacks":{"shop":{"files":["stacks/shop/compose.yaml"],"environments":{"staging":null}}}}`,
			"stacks.shop.environments.staging is empty"},
		// A second document after the first was ignored.
		"trailing data": {`{"schema_version":1,"stacks":{"shop":{"files":["stacks/shop/compose.yaml"]}}} {"schema_version":2}`,
			"data after the JSON object"},
		"trailing garbage": {`{"schema_version":1,"stacks":{"shop":{"files":["stacks/shop/compose.yaml"]}}}]`,
			"data after the JSON object"},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := manifest.Parse([]byte(tc.in))
			if err == nil || r != nil {
				t.Fatalf("accepted: %+v", r)
			}
			if fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v (%v), want invalid input with %q", err, fault.KindOf(err), tc.want)
			}
		})
	}
}

// `"environments": {}` is what an omitted key is: no environment configured, every environment loads the
// stack's files. Before, the empty object made every environment unknown, while its encoding (which omits
// the key) loaded the files: the same release read two ways.
func TestEmptyEnvironmentsIsOmitted(t *testing.T) {
	for _, in := range []string{
		`{"schema_version":1,"stacks":{"shop":{"files":["stacks/shop/compose.yaml"],"environments":{}}}}`,
		`{"schema_version":1,"stacks":{"shop":{"files":["stacks/shop/compose.yaml"]}}}`,
	} {
		r, err := manifest.Parse([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		files, err := r.Files("/rel", "shop", "production")
		if err != nil || len(files) != 1 || files[0] != "/rel/stacks/shop/compose.yaml" {
			t.Fatalf("%s: files %v, %v", in, files, err)
		}
	}
}

// A release.json over MaxSize is refused before it is decoded; white space counts.
func TestParseRefusesOversized(t *testing.T) {
	b := []byte(sampleRelease + strings.Repeat(" ", manifest.MaxSize-len(sampleRelease)))
	if _, err := manifest.Parse(b); err != nil {
		t.Fatalf("MaxSize bytes: %v", err)
	}
	_, err := manifest.Parse(append(b, ' '))
	if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "more than 4194304 bytes") {
		t.Fatalf("MaxSize+1 bytes: %v", err)
	}
}

// A trailing newline (Encode writes one) and surrounding white space are fine.
func TestParseAcceptsWhiteSpace(t *testing.T) {
	if _, err := manifest.Parse([]byte(" \n" + sampleRelease + "\n\t\r\n")); err != nil {
		t.Fatal(err)
	}
}
