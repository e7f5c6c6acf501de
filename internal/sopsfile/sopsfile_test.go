package sopsfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/redact"
)

// identity generates an age identity for a test.
func identity(t testing.TB) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func encrypt(t testing.TB, name, plain string, to ...*age.X25519Identity) []byte {
	t.Helper()
	var rs []string
	for _, id := range to {
		rs = append(rs, id.Recipient().String())
	}
	b, err := Encrypt(name, []byte(plain), rs...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestValues(t *testing.T) {
	id := identity(t)
	r := redact.New()
	d, err := New("# the agent\n"+id.String()+"\n", r)
	if err != nil {
		t.Fatal(err)
	}
	yamlFile := encrypt(t, "db.sops.yaml", "db:\n  password: pw-yaml-1234\n  port: 5432\nusers: [alice, bob]\n", id)
	if bytes.Contains(yamlFile, []byte("pw-yaml-1234")) {
		t.Fatal("the encrypted file holds the value")
	}
	cases := []struct{ name, key, want string }{
		{"db.sops.yaml", "db.password", "pw-yaml-1234"},
		{"db.sops.yaml", "db.port", "5432"},
		{"db.sops.yaml", "users.1", "bob"},
	}
	for _, c := range cases {
		got, err := d.Value(c.name, yamlFile, c.key)
		if err != nil || string(got) != c.want {
			t.Errorf("%s %s: %q, %v; want %q", c.name, c.key, got, err, c.want)
		}
	}
	whole, err := d.Value("db.sops.yaml", yamlFile, "")
	if err != nil || !strings.Contains(string(whole), "password: pw-yaml-1234") || strings.Contains(string(whole), "sops:") {
		t.Fatalf("whole file: %q, %v", whole, err)
	}
	for _, bad := range []string{"db", "users", "db.nope", "users.7", "db.port.x"} {
		if _, err := d.Value("db.sops.yaml", yamlFile, bad); err == nil || !strings.Contains(err.Error(), "db.sops.yaml") || strings.Contains(err.Error(), "pw-yaml") {
			t.Errorf("key %s: %v", bad, err)
		}
	}

	jsonFile := encrypt(t, "api.sops.json", `{"api": {"token": "tok-json-5678"}}`, id)
	if got, err := d.Value("api.sops.json", jsonFile, "api.token"); err != nil || string(got) != "tok-json-5678" {
		t.Errorf("json: %q, %v", got, err)
	}
	envFile := encrypt(t, "app.sops.env", "APP.KEY=env-dotted-9999\nOTHER=x-other-value\n", id)
	if got, err := d.Value("app.sops.env", envFile, "APP.KEY"); err != nil || string(got) != "env-dotted-9999" {
		t.Errorf("dotenv: %q, %v", got, err)
	}
	binFile := encrypt(t, "tls.key", "-----BEGIN KEY-----\nbinary-secret-0000\n", id)
	if got, err := d.Value("tls.key", binFile, ""); err != nil || string(got) != "-----BEGIN KEY-----\nbinary-secret-0000\n" {
		t.Errorf("binary: %q, %v", got, err)
	}
	for _, v := range []string{"pw-yaml-1234", "tok-json-5678", "env-dotted-9999", "binary-secret-0000"} {
		if got := r.String("log: " + v); strings.Contains(got, v) {
			t.Errorf("the redactor did not learn %s: %s", v, got)
		}
	}
}

// A file the agent cannot decrypt is an invalid input naming the file, whose message holds no value.
func TestCannotDecrypt(t *testing.T) {
	id, other := identity(t), identity(t)
	d, err := New(id.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	good := encrypt(t, "s.sops.yaml", "password: tampered-value-1\nother: keep\n", id)
	tampered := bytes.Replace(good, []byte("other: ENC[AES256_GCM,data:"), []byte("other: ENC[AES256_GCM,data:AA"), 1)
	if bytes.Equal(tampered, good) {
		t.Fatal("the test did not tamper with the file")
	}
	// A changed MAC (the last modification time signs it too).
	macTampered := bytes.Replace(good, []byte("lastmodified: \"20"), []byte("lastmodified: \"19"), 1)
	cases := map[string][]byte{
		"wrong key":    encrypt(t, "s.sops.yaml", "password: other-recipient\n", other),
		"tampered":     tampered,
		"mac tampered": macTampered,
		"not sops":     []byte("password: plain\n"),
		"not yaml":     []byte("\x00\x01{{"),
	}
	for what, data := range cases {
		_, err := d.Value("stacks/shop/s.sops.yaml", data, "password")
		if err == nil || !strings.Contains(err.Error(), "stacks/shop/s.sops.yaml") || fault.KindOf(err) != fault.Invalid {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if strings.Contains(err.Error(), "tampered-value") || strings.Contains(err.Error(), "AGE-SECRET") {
			t.Errorf("%s: the error holds a secret: %v", what, err)
		}
		if what == "mac tampered" && !strings.Contains(err.Error(), "MAC does not match") {
			t.Errorf("%s: %v", what, err)
		}
		t.Logf("%s: %v", what, err)
	}
}

func TestLoadRefusesAReadableKeyFile(t *testing.T) {
	id := identity(t)
	path := filepath.Join(t.TempDir(), "age.key")
	if err := os.WriteFile(path, []byte(id.String()+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "readable by others (mode 0640)") {
		t.Fatalf("a group-readable key file: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("AGE-SECRET-KEY-1NOTAKEY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || strings.Contains(err.Error(), "NOTAKEY") {
		t.Fatalf("a bad key file: %v", err)
	}
}
