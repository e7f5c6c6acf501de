package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/verify"
)

// verifyFlags adds the signature flags of plan and apply.
func verifyFlags(cmd *cobra.Command) {
	trustFlag(cmd)
	cmd.Flags().Bool("skip-verify", false, "do not verify signatures (development only; the policies see every signature as unknown)")
}

func trustFlag(cmd *cobra.Command) {
	cmd.Flags().String("trust", "", "trust policy file (YAML with a top-level `trust:`): which keys or keyless identities sign which images")
}

// readTrust loads --trust FILE; nil when the flag is empty.
func readTrust(cmd *cobra.Command) (*verify.Trust, error) {
	path, _ := cmd.Flags().GetString("trust")
	if path == "" {
		return nil, nil
	}
	tv := viper.New()
	tv.SetConfigFile(path)
	if err := tv.ReadInConfig(); err != nil {
		return nil, usageError{fmt.Errorf("--trust %s: %w", path, err)}
	}
	return loadTrust(tv)
}

// checkSignatures gives `agent check` and `agent render` the signature results of the stack's images when
// a trust policy is given: verified, warned or rejected as the registry says, and "unknown" when the
// registry cannot be reached (check needs no network; the policies decide what unknown means).
func checkSignatures(cmd *cobra.Command, st *stack.Stack) (map[string]policy.Signature, error) {
	trust, err := readTrust(cmd)
	if trust == nil || err != nil {
		return nil, err
	}
	var refs []string
	for _, s := range st.Services {
		if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil {
			refs = append(refs, cs.Image)
		}
	}
	results, _ := verify.New(trust, verify.Options{}).VerifyAll(cmd.Context(), refs)
	out := map[string]policy.Signature{}
	for _, r := range results {
		out[r.Ref] = reconcile.PolicySignature(r)
	}
	return out, nil
}

// loadTrust reads the trust policy under key "trust" of v.
func loadTrust(v *viper.Viper) (*verify.Trust, error) {
	if !v.IsSet("trust") {
		return nil, usageError{errors.New("no trust policy: give --trust FILE (or `trust:` in the config file), or --skip-verify for development")}
	}
	var p verify.TrustPolicy
	if err := v.UnmarshalKey("trust", &p); err != nil {
		return nil, usageError{fmt.Errorf("trust policy: %w", err)}
	}
	return p.Compile()
}

// checks builds the gates of plan and apply, in order: signatures (verify and pin every image), then the
// policies (which see the signature results).
func checks(v *viper.Viper, cmd *cobra.Command, log *slog.Logger, out io.Writer) ([]reconcile.Check, error) {
	gate, err := policyGate(v, cmd, log, out)
	if err != nil {
		return nil, err
	}
	if skip, _ := cmd.Flags().GetBool("skip-verify"); skip {
		log.Warn("signature verification is off (--skip-verify)")
		return []reconcile.Check{gate.Check}, nil
	}
	trust, err := readTrust(cmd)
	if err != nil {
		return nil, err
	}
	if trust == nil {
		return nil, usageError{errors.New("no trust policy: give --trust FILE, or --skip-verify for development")}
	}
	if format, _ := cmd.Flags().GetString("output"); format != "text" {
		out = nil
	}
	sigs := &reconcile.Signatures{Verifier: verify.New(trust, verify.Options{Logger: log}), Log: log, Out: out}
	gate.Signatures = sigs.Results
	return []reconcile.Check{sigs.Check, gate.Check}, nil
}
