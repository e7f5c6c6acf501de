package sopsfile

import (
	"strings"
	"testing"

	"github.com/sabeiro/sawmill/internal/fault"
)

// FuzzValue: whatever a release's SOPS file holds, decrypting it never panics, and a file that is not a valid
// SOPS file of the agent's identity is an invalid input naming the file. The committed corpus (testdata/fuzz)
// holds files for identities that are not the fuzzer's (they reach the data key and stop there), plaintext
// and damaged documents; the seeds added here are encrypted for the fuzzer's identity, so that mutations reach
// the values and the MAC.
func FuzzValue(f *testing.F) {
	id := identity(f)
	d, err := New(id.String(), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encrypt(f, "f.sops.yaml", "db:\n  password: fuzz-pw\nlist: [1, 2]\n", id), "db.password")
	f.Add(encrypt(f, "f.sops.yaml", "a: b\n", id), "")
	f.Add(encrypt(f, "f.sops.json", `{"a": {"b": ["c", 1, true]}}`, id), "a.b.2")
	f.Fuzz(func(t *testing.T, data []byte, key string) {
		for _, name := range []string{"f.sops.yaml", "f.sops.json", "f.sops.env", "f.bin"} {
			_, err := d.Value(name, data, key)
			if err != nil && (fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), name)) {
				t.Fatalf("%s: %v", name, err)
			}
		}
	})
}
