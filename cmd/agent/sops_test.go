package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/redact"
	"github.com/sabeiro/sawmill/internal/sopsfile"
)

// sopsHelperBinary builds cmd/sawmill-sops once per test process: the in-process agent of the tests finds it
// through sops.helper.
func sopsHelperBinary(t *testing.T) string { return buildOnce(t, "../sawmill-sops", sopsHelperName) }

// ageKeyFile writes a new age identity to a file readable by its owner only.
func ageKeyFile(t *testing.T) (string, *age.X25519Identity) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "age.key")
	if err := os.WriteFile(path, []byte("# the agent's\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, id
}

// The agent's decrypter runs the real helper: the value at a key, the whole file, each value learned by the
// redactor (each value inside a whole file too, and no other value of a file); a file for another identity is an invalid-input error naming the file, with no value in it.
func TestSOPSHelperDecrypter(t *testing.T) {
	keyFile, id := ageKeyFile(t)
	r := redact.New()
	d, err := newSOPSDecrypter(SOPSConfig{AgeKeyFile: keyFile, Helper: sopsHelperBinary(t)}, r)
	if err != nil {
		t.Fatal(err)
	}
	value := "pw-" + randomName("")
	token := "tok-" + randomName("")
	plain := "db:\n  user: shop\n  password: " + value + "\n  token: " + token + "\n"
	enc := func(to *age.X25519Identity) []byte {
		b, err := sopsfile.Encrypt("db.sops.yaml", []byte(plain), to.Recipient().String())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	data := enc(id)

	got, err := d.Value("stacks/shop/db.sops.yaml", data, "db.password")
	if err != nil || string(got) != value {
		t.Fatalf("db.password: %q, %v; want the value", got, err)
	}
	if out := r.String("the password is " + value); strings.Contains(out, value) {
		t.Fatalf("the redactor did not learn the value: %s", out)
	}
	if out := r.String(token); out != token {
		t.Fatalf("the agent learned a value of the file it did not ask for: %s", out)
	}
	whole, err := d.Value("stacks/shop/db.sops.yaml", data, "")
	if err != nil || !strings.Contains(string(whole), "password: "+value) || strings.Contains(string(whole), "sops:") {
		t.Fatalf("the whole file: %q, %v", whole, err)
	}
	if out := r.String("token " + token); strings.Contains(out, token) {
		t.Fatalf("with the whole file, the redactor did not learn each value in it: %s", out)
	}

	other, _ := age.GenerateX25519Identity()
	_, err = d.Value("stacks/shop/db.sops.yaml", enc(other), "db.password")
	if err == nil {
		t.Fatal("a file for another identity was decrypted")
	}
	if !strings.Contains(err.Error(), "stacks/shop/db.sops.yaml") || strings.Contains(err.Error(), value) || fault.KindOf(err) != fault.Invalid {
		t.Fatalf("a file for another identity: %v (%v), want an invalid-input error naming the file and no value", err, fault.KindOf(err))
	}
	_, err = d.Value("stacks/shop/db.sops.yaml", data, "db.nope")
	if err == nil || !strings.Contains(err.Error(), `no "nope"`) || strings.Contains(err.Error(), value) {
		t.Fatalf("a missing key: %v", err)
	}
}

// The checks before anything runs: the helper must be found, the key file must hold age identities.
func TestSOPSDecrypterChecks(t *testing.T) {
	keyFile, _ := ageKeyFile(t)
	if _, err := newSOPSDecrypter(SOPSConfig{AgeKeyFile: keyFile, Helper: filepath.Join(t.TempDir(), "nope")}, nil); err == nil || !strings.HasPrefix(err.Error(), "sops.helper:") {
		t.Fatalf("a missing helper: %v", err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := newSOPSDecrypter(SOPSConfig{AgeKeyFile: keyFile}, nil); err == nil || !strings.Contains(err.Error(), "sawmill-sops is neither next to the agent's executable nor in PATH") {
		t.Fatalf("no helper anywhere: %v", err)
	}
	for name, content := range map[string]string{
		"not age": "AGE-SECRET-KEY-1NOTAKEY\n",
		"empty":   "# nothing\n\n",
	} {
		path := filepath.Join(t.TempDir(), "age.key")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		err := checkAgeKeyFile(path)
		if err == nil || !strings.HasPrefix(err.Error(), "sops.age_key_file:") || strings.Contains(err.Error(), "NOTAKEY") {
			t.Errorf("%s: %v, want an error naming the key and not the content", name, err)
		}
	}
}
