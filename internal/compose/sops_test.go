package compose

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/sopsfile"
)

// A release's SOPS-encrypted secret files reach the secrets decrypted: the whole file, or the value at a key;
// without the agent's identity, or with a file it cannot decrypt, the load is invalid and names the file.
func TestSOPSSecrets(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	release := t.TempDir()
	dir := filepath.Join(release, "stacks", "shop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	enc := func(name, plain string) []byte {
		b, err := sopsfile.Encrypt(name, []byte(plain), id.Recipient().String())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write("db.sops.yaml", enc("db.sops.yaml", "db:\n  password: sops-pw-4242\n"))
	write("tls.key.enc", enc("tls.key.enc", "binary-key-7777"))
	write("compose.yaml", []byte(`services:
  web:
    image: r/web:1
    secrets: [db_password, db_all, tls_key]
secrets:
  db_password:
    file: ./db.sops.yaml
    x-sawmill-sops: db.password
  db_all:
    file: ./db.sops.yaml
  tls_key:
    file: ./tls.key.enc
    x-sawmill-sops: true
`))
	dec, err := sopsfile.New(id.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Files: []string{filepath.Join(dir, "compose.yaml")}, Stack: "shop", Root: release, Strict: true, SOPS: dec}
	st, err := Load(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range st.Secrets {
		got[s.Key] = string(s.Data)
	}
	if got["db_password"] != "sops-pw-4242" || !strings.Contains(got["db_all"], "password: sops-pw-4242") || got["tls_key"] != "binary-key-7777" {
		t.Fatalf("secrets %v", got)
	}

	// Without the identity: invalid, naming the file; check and render judge it without its value.
	o.SOPS = nil
	if _, err := Load(context.Background(), o); err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "stacks/shop/db.sops.yaml is SOPS-encrypted") {
		t.Fatalf("without an identity: %v", err)
	}
	o.WithoutValues = true
	if st, err := Load(context.Background(), o); err != nil || len(st.Warnings) == 0 {
		t.Fatalf("check without an identity: %v", err)
	}

	// Another identity: invalid, naming the file, no value in the message.
	other, _ := age.GenerateX25519Identity()
	o.SOPS, _ = sopsfile.New(other.String(), nil)
	o.WithoutValues = false
	_, err = Load(context.Background(), o)
	if err == nil || fault.KindOf(err) != fault.Invalid || !strings.Contains(err.Error(), "sops file stacks/shop/db.sops.yaml") || strings.Contains(err.Error(), "sops-pw") {
		t.Fatalf("another identity: %v", err)
	}

	// The SOPS file stays confined to the release.
	outside := filepath.Join(t.TempDir(), "x.sops.yaml")
	if err := os.WriteFile(outside, enc("x.sops.yaml", "a: b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	write("compose.yaml", []byte("services:\n  web:\n    image: r/web:1\n    secrets: [x]\nsecrets:\n  x:\n    file: "+outside+"\n"))
	o.SOPS = dec
	if _, err := Load(context.Background(), o); err == nil || !strings.Contains(err.Error(), "outside the release directory") {
		t.Fatalf("a SOPS file outside the release: %v", err)
	}
	write("compose.yaml", []byte("services:\n  web:\n    image: r/web:1\n    secrets: [x]\nsecrets:\n  x:\n    file: ./db.sops.yaml\n    x-sawmill-sops: [1]\n"))
	if _, err := Load(context.Background(), o); err == nil || !strings.Contains(err.Error(), "x-sawmill-sops: a key path") {
		t.Fatalf("a bad x-sawmill-sops: %v", err)
	}
}

func TestIsSOPSFile(t *testing.T) {
	for name, want := range map[string]bool{"a.sops.yaml": true, "dir/B.SOPS.YML": true, "x.sops.json": true, "x.sops.env": true, "x.yaml": false, "sops.yaml": false, "x.sops": false} {
		if IsSOPSFile(name) != want {
			t.Errorf("%s: %v", name, !want)
		}
	}
}
