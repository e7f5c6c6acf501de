package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/fault"
)

// decodeTrust decodes a trust file as the agent's readTrust (cmd/agent/verify.go) does: viper reads the
// YAML, the policy is the top-level `trust:` key, unmarshalled with viper's mapstructure hooks.
func decodeTrust(b []byte) (*TrustPolicy, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
		return nil, err
	}
	if !v.IsSet("trust") {
		return nil, fmt.Errorf("no top-level `trust:`")
	}
	var p TrustPolicy
	if err := v.UnmarshalKey("trust", &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// FuzzTrustPolicy decodes a trust file and compiles it. No panic; Compile's errors are invalid input
// (exit 2); a policy that compiles has the same Revision every time it is decoded and compiled, and a
// different one when its content differs (allow_unmatched flipped).
func FuzzTrustPolicy(f *testing.F) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		f.Fatal(err)
	}
	_, root := virtualSigstore(f)
	keyFile := f.TempDir() + "/cosign.pub"
	writeFile(f, keyFile, string(pub))
	indent := func(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n            ") }
	f.Add([]byte(`trust:
  allow_unmatched: false
  rules:
    - pattern: registry.gitlab.com/sawmill/platform/**
      mode: enforce
      authorities:
        - name: release-key
          key: ` + keyFile + `
        - name: gitlab-ci
          keyless:
            issuer: https://gitlab.com
            subject_regexp: ^https://gitlab\.com/sawmill/platform//\.gitlab-ci\.yml@refs/heads/main$
            trusted_root: ` + root + `
            evidence: tlog
`))
	f.Add([]byte(`trust:
  rules:
    - pattern: "*.example.com/*/app?"
      mode: warn
      authorities:
        - key: |
            ` + indent(string(pub)) + `
    - pattern: index.docker.io/library/*
      authorities:
        - keyless: {issuer: https://token.actions.githubusercontent.com, subject: https://github.com/o/r/.github/workflows/release.yml@refs/tags/v1, trusted_root: ` + root + `, evidence: timestamp, ignore_sct: true}
`))
	f.Add([]byte("trust:\n  allow_unmatched: true\n"))
	f.Add([]byte("trust:\n  rules:\n    - pattern: \"\"\n      mode: audit\n      authorities: []\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeTrust(b)
		if err != nil {
			return
		}
		tr, err := p.Compile()
		if err != nil {
			if fault.KindOf(err) != fault.Invalid || !strings.HasPrefix(err.Error(), "trust policy: ") {
				t.Fatalf("Compile error is %v: %v", fault.KindOf(err), err)
			}
			return
		}
		rev := tr.Revision()
		if !strings.HasPrefix(rev, "sha256:") || len(rev) != len("sha256:")+64 {
			t.Fatalf("revision %q", rev)
		}
		p2, err := decodeTrust(b)
		if err != nil {
			t.Fatalf("the same bytes decode once and fail once: %v", err)
		}
		tr2, err := p2.Compile()
		if err != nil || tr2.Revision() != rev {
			t.Fatalf("the same policy compiles to revision %q, then %v %v", rev, tr2, err)
		}
		p2.AllowUnmatched = !p2.AllowUnmatched
		if tr3, err := p2.Compile(); err == nil && tr3.Revision() == rev {
			t.Fatalf("allow_unmatched flipped, revision unchanged: %s", rev)
		}
		// Matching never panics, whatever the patterns compiled to.
		for _, repo := range []string{"registry.gitlab.com/sawmill/platform/go_ingest", "index.docker.io/library/postgres", "", "a/b/c"} {
			_ = tr.match(repo)
		}
	})
}
