package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/verify"
)

// verifyFlags adds the signature flags of plan and apply.
func verifyFlags(cmd *cobra.Command) {
	cmd.Flags().String("trust", "", "trust policy file (YAML with a top-level `trust:`): which keys or keyless identities sign which images")
	cmd.Flags().Bool("skip-verify", false, "do not verify signatures (development only; the policies see every signature as unknown)")
}

// loadTrust reads the trust policy under key "trust" of v.
func loadTrust(v *viper.Viper) (*verify.Trust, error) {
	if !v.IsSet("trust") {
		return nil, usageError{errors.New("no trust policy: give --trust FILE (or `trust:` in the config file), or --skip-verify for development")}
	}
	var p verify.Policy
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
	tv := viper.New()
	if path, _ := cmd.Flags().GetString("trust"); path != "" {
		tv.SetConfigFile(path)
		if err := tv.ReadInConfig(); err != nil {
			return nil, usageError{fmt.Errorf("--trust %s: %w", path, err)}
		}
	}
	trust, err := loadTrust(tv)
	if err != nil {
		return nil, err
	}
	if format, _ := cmd.Flags().GetString("output"); format != "text" {
		out = nil
	}
	sigs := &reconcile.Signatures{Verifier: verify.New(trust, verify.Options{Logger: log}), Log: log, Out: out}
	gate.Signatures = sigs.Results
	return []reconcile.Check{sigs.Check, gate.Check}, nil
}
