package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/sabeiro/sawmill/internal/sopsfile"
)

// helper builds the command.
func helper(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sawmill-sops")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// run runs the helper with stdin and args: its answers, stderr and exit code.
func run(t *testing.T, bin string, stdin []byte, args ...string) ([]Answer, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	var answers []Answer
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var a Answer
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("answer line %q: %v", sc.Text(), err)
		}
		answers = append(answers, a)
	}
	return answers, stderr.String(), code
}

// A batch of requests is answered in order, one line each: values, and errors that name the file and hold no
// value; input that is not JSON is exit 1, arguments exit 2; nothing is written to stderr but the protocol's
// errors.
func TestHelperAnswersRequests(t *testing.T) {
	bin := helper(t)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "age.key")
	if err := os.WriteFile(keyFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := age.GenerateX25519Identity()
	value := "v-" + strings.Repeat("x", 8) + "-secret"
	enc := func(to *age.X25519Identity) []byte {
		b, err := sopsfile.Encrypt("db.sops.json", []byte(`{"db":{"password":"`+value+`"}}`), to.Recipient().String())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var in bytes.Buffer
	for _, r := range []Request{
		{AgeKeyFile: keyFile, Name: "stacks/a/db.sops.json", Data: enc(id), Key: "db.password"},
		{AgeKeyFile: keyFile, Name: "stacks/b/db.sops.json", Data: enc(other), Key: "db.password"},
		{AgeKeyFile: filepath.Join(t.TempDir(), "none"), Name: "stacks/c/db.sops.json", Data: enc(id), Key: "db.password"},
		{AgeKeyFile: keyFile, Name: "stacks/d/db.sops.json", Data: enc(id), Key: "db"},
	} {
		b, _ := json.Marshal(r)
		in.Write(append(b, '\n'))
	}
	answers, stderr, code := run(t, bin, in.Bytes())
	if code != 0 || stderr != "" || len(answers) != 4 {
		t.Fatalf("exit %d, %d answers, stderr %q; want 0, 4, nothing", code, len(answers), stderr)
	}
	if string(answers[0].Value) != value || answers[0].Error != "" {
		t.Fatalf("answer 1: %+v, want the value", answers[0])
	}
	for i, want := range []string{"sops file stacks/b/db.sops.json: the agent's age identity is not a recipient", "sops.age_key_file:", "sops file stacks/d/db.sops.json: x-sawmill-sops key \"db\": a mapping"} {
		a := answers[i+1]
		if !strings.Contains(a.Error, want) || a.Value != nil || strings.Contains(a.Error, value) {
			t.Errorf("answer %d: %+v, want an error %q and no value", i+2, a, want)
		}
	}

	if _, stderr, code := run(t, bin, []byte(`{"name": "x", "data": "`+value)); code != 1 || strings.Contains(stderr, value) {
		t.Errorf("cut input: exit %d, stderr %q; want 1 without the input", code, stderr)
	}
	if _, _, code := run(t, bin, nil, "decrypt"); code != 2 {
		t.Errorf("an argument: exit %d, want 2", code)
	}
	if answers, _, code := run(t, bin, nil); code != 0 || len(answers) != 0 {
		t.Errorf("no request: exit %d, %d answers; want 0, none", code, len(answers))
	}
}
