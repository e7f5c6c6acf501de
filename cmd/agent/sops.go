package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/redact"
)

// The agent decrypts SOPS files with the helper cmd/sawmill-sops, in its own process: the SOPS library links
// every cloud KMS SDK, which would make the agent's binary, start and memory 40-60% bigger for as long as it
// runs. The helper runs only when a release has a SOPS-encrypted secret; the agent checks the age identity
// itself before anything runs.

// sopsHelperName is the helper's file name, looked for next to the agent's executable, then in PATH.
const sopsHelperName = "sawmill-sops"

// sopsHelperTimeout bounds one run of the helper.
const sopsHelperTimeout = time.Minute

// helperDecrypter is a compose.Decrypter that asks the helper for every value; redact learns each value
// returned (and each value inside a whole file returned).
type helperDecrypter struct {
	helper  string
	keyFile string
	redact  *redact.Redactor
	timeout time.Duration
}

var _ compose.Decrypter = (*helperDecrypter)(nil)

// newSOPSDecrypter checks the age identity file (it exists, is readable by its owner only, holds age
// identities) and finds the helper (sops.helper; else sawmill-sops next to the agent's executable; else in
// PATH). Its errors name the configuration key.
func newSOPSDecrypter(c SOPSConfig, r *redact.Redactor) (*helperDecrypter, error) {
	if err := checkAgeKeyFile(c.AgeKeyFile); err != nil {
		return nil, err
	}
	helper, err := findSOPSHelper(c.Helper)
	if err != nil {
		return nil, err
	}
	return &helperDecrypter{helper: helper, keyFile: c.AgeKeyFile, redact: r, timeout: sopsHelperTimeout}, nil
}

// checkAgeKeyFile checks the agent's age identity file as the helper will read it, so that a mistake stops the
// agent before anything runs.
func checkAgeKeyFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sops.age_key_file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("sops.age_key_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("sops.age_key_file: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("sops.age_key_file: %s is readable by others (mode %04o): it must be readable by the agent only (chmod 600 or 400)", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return fmt.Errorf("sops.age_key_file: %w", err)
	}
	// One identity a line, # comments; the helper also takes age plugin identities (AGE-PLUGIN-...), which are
	// not parsed here.
	var keys []string
	plugins := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "AGE-PLUGIN-"):
			plugins++
		default:
			keys = append(keys, line)
		}
	}
	if len(keys) > 0 {
		if _, err := age.ParseIdentities(strings.NewReader(strings.Join(keys, "\n"))); err != nil {
			// The parser's message may quote the file's content.
			return errors.New("sops.age_key_file: not an age identity file (AGE-SECRET-KEY-1... lines)")
		}
	}
	if len(keys)+plugins == 0 {
		return errors.New("sops.age_key_file: no age identity in the file")
	}
	return nil
}

// findSOPSHelper is the helper's path: configured (sops.helper), next to the agent's executable, or in PATH.
func findSOPSHelper(configured string) (string, error) {
	if configured != "" {
		if _, err := os.Stat(configured); err != nil {
			return "", fmt.Errorf("sops.helper: %w", err)
		}
		return configured, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), sopsHelperName)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(sopsHelperName)
	if err != nil {
		return "", fmt.Errorf("sops.helper: %s is neither next to the agent's executable nor in PATH (install it with the agent, or set sops.helper)", sopsHelperName)
	}
	return p, nil
}

// helperRequest and helperAnswer are cmd/sawmill-sops's protocol.
type helperRequest struct {
	AgeKeyFile string `json:"age_key_file"`
	Name       string `json:"name"`
	Data       []byte `json:"data"`
	Key        string `json:"key"`
}

type helperAnswer struct {
	Value  []byte   `json:"value"`
	Error  string   `json:"error"`
	Redact []string `json:"redact"`
}

// Value runs the helper for the value at key of the SOPS file name (data its content). The helper's errors
// (they name the file and hold no value) are fault.Invalid; a helper that cannot run or answer is
// fault.Transient.
func (d *helperDecrypter) Value(name string, data []byte, key string) ([]byte, error) {
	req, err := json.Marshal(helperRequest{AgeKeyFile: d.keyFile, Name: name, Data: data, Key: key})
	if err != nil {
		return nil, fmt.Errorf("sops file %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.helper)
	cmd.Stdin = bytes.NewReader(req)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &limitedBuffer{b: &stderr, n: 4096}
	cmd.Env = []string{} // the helper reads nothing of the agent's environment
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if ctx.Err() != nil {
			msg = fmt.Sprintf("no answer within %s", d.timeout)
		}
		return nil, fault.TransientErr(fmt.Errorf("sops file %s: the helper %s: %w (%s)", name, d.helper, err, msg))
	}
	var a helperAnswer
	if err := json.NewDecoder(&stdout).Decode(&a); err != nil {
		return nil, fault.TransientErr(fmt.Errorf("sops file %s: the helper %s gave no answer", name, d.helper))
	}
	if a.Error != "" {
		return nil, fault.InvalidErr(errors.New(a.Error))
	}
	if d.redact != nil {
		// The value, and for a whole file each value in it.
		d.redact.Add(append(a.Redact, string(a.Value))...)
	}
	return a.Value, nil
}

// limitedBuffer keeps the first n bytes written to it and drops the rest.
type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
