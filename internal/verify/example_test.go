package verify_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/verify"
)

const trustYAML = `
trust:
  allow_unmatched: false
  rules:
    - pattern: registry.gitlab.com/group/**
      mode: enforce
      authorities:
        - name: gitlab-ci
          keyless:
            issuer: https://gitlab.com
            subject_regexp: ^https://gitlab\.com/group/[^/]+//\.gitlab-ci\.yml@refs/heads/main$
            trusted_root: /etc/sawmill/trusted_root.json
            evidence: tlog
    - pattern: 127.0.0.1:5000/*
      mode: warn
      authorities:
        - key: /etc/sawmill/cosign.pub
`

// The trust policy loads with viper (the mapstructure tags) as cmd/agent would.
func TestPolicyLoadsWithViper(t *testing.T) {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(strings.NewReader(trustYAML)); err != nil {
		t.Fatal(err)
	}
	var p verify.TrustPolicy
	if err := v.UnmarshalKey("trust", &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 2 || p.Rules[0].Authorities[0].Keyless == nil ||
		p.Rules[0].Authorities[0].Keyless.SubjectRegexp == "" || p.Rules[0].Authorities[0].Keyless.Evidence != "tlog" ||
		p.Rules[1].Mode != verify.Warn || p.Rules[1].Authorities[0].Key != "/etc/sawmill/cosign.pub" {
		t.Fatalf("%+v", p)
	}
}

// How the agent uses the package in plan/apply/check: verify every service image, refuse the stack on any
// rejection (exit 3 via fault.Refused), and deploy the pinned references.
func Example() {
	var p verify.TrustPolicy // loaded from the agent's configuration
	trust, err := p.Compile()
	if err != nil {
		fmt.Println(err) // fault.Invalid
		return
	}
	v := verify.New(trust, verify.Options{}) // keep it for the daemon's lifetime: the cache lives in it
	images := map[string]string{"web": "registry.gitlab.com/group/web:v1"}
	var refs []string
	for _, img := range images {
		refs = append(refs, img)
	}
	results, err := v.VerifyAll(context.Background(), refs)
	for _, r := range results {
		fmt.Println(r.Ref, r.Status, r.Digest, r.Signers, r.Reason) // plan output
	}
	if err != nil {
		return // fault.Refused: exit 3, the swarm is not touched
	}
	pinned := verify.PinnedRefs(results)
	for svc, img := range images {
		images[svc] = pinned[img] // repo:tag@sha256:..., submitted with QueryRegistry off
	}
}
