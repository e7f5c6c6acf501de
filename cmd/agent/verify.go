package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/verify"
)

var errNoTrust = errors.New("no trust policy: give --trust FILE (or `trust:` in the config file), or --skip-verify for development")

// verifyFlags adds the signature flags of plan and apply.
func verifyFlags(cmd *cobra.Command) {
	trustFlag(cmd)
	cmd.Flags().Bool("skip-verify", false, "do not verify signatures (development only; the policies see every signature as unknown)")
}

func trustFlag(cmd *cobra.Command) {
	cmd.Flags().String("trust", "", "trust policy file (YAML with a top-level `trust:`): which keys or keyless identities sign which images")
}

// readTrust loads --trust FILE; nil when the flag is empty.
func readTrust(cmd *cobra.Command) (*verify.TrustPolicy, error) {
	path, _ := cmd.Flags().GetString("trust")
	if path == "" {
		return nil, nil
	}
	tv := viper.New()
	tv.SetConfigFile(path)
	if err := tv.ReadInConfig(); err != nil {
		return nil, usageError{fmt.Errorf("--trust %s: %w", path, err)}
	}
	if !tv.IsSet("trust") {
		return nil, usageError{fmt.Errorf("--trust %s: no top-level `trust:`", path)}
	}
	var p verify.TrustPolicy
	if err := tv.UnmarshalKey("trust", &p); err != nil {
		return nil, usageError{fmt.Errorf("trust policy: %w", err)}
	}
	return &p, nil
}

// newVerifier compiles the trust policy into a verifier.
func newVerifier(p verify.TrustPolicy, log *slog.Logger) (*verify.Verifier, error) {
	trust, err := p.Compile()
	if err != nil {
		return nil, err
	}
	return verify.New(trust, verify.Options{Logger: log}), nil
}

// checkSignatures gives `agent check` and `agent render` the signature results of the stack's images when
// a trust policy is given: verified, warned or rejected as the registry says, and "unknown" when the
// registry cannot be reached (check needs no network; the policies decide what unknown means).
func checkSignatures(cmd *cobra.Command, st *stack.Stack) (map[string]policy.Signature, error) {
	p, err := readTrust(cmd)
	if p == nil || err != nil {
		return nil, err
	}
	v, err := newVerifier(*p, nil)
	if err != nil {
		return nil, err
	}
	var refs []string
	for _, s := range st.Services {
		if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil {
			refs = append(refs, cs.Image)
		}
	}
	results, _ := v.VerifyAll(cmd.Context(), refs)
	return reconcile.PolicySignatures(results), nil
}
