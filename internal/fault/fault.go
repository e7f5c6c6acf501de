// Package fault classifies errors into the few kinds the agent's users see. A stage wraps its error with one
// of the constructors (InvalidErr, RefusedErr, RolloutErr); callers inspect it with KindOf, and
// internal/outcome turns it into the outcome that the exit code, the metrics and GitLab show.
//
// It imports only the standard library.
package fault

import "errors"

// Kind is the class of a failure.
type Kind int

// The kinds, in the order of the agent's exit codes.
const (
	// Unknown is an error nobody classified: an engine that cannot be reached, say.
	Unknown Kind = iota
	// Rollout: the rollout was attempted and failed; the previous version keeps running.
	Rollout
	// Invalid: invalid input or usage; nothing was touched.
	Invalid
	// Refused: signature or policy checks refused the input; nothing was touched.
	Refused
	// Transient: a registry, GitLab or the engine could not answer (an outage, a 5xx, a 429, a timeout);
	// nothing was touched, nothing is concluded about the release, and the cycle is retried with backoff.
	Transient
)

func (k Kind) String() string {
	switch k {
	case Rollout:
		return "rollout failed"
	case Invalid:
		return "invalid input"
	case Refused:
		return "refused"
	case Transient:
		return "transient"
	}
	return "error"
}

type classified struct {
	kind Kind
	err  error
}

func (c *classified) Error() string { return c.err.Error() }
func (c *classified) Unwrap() error { return c.err }

func wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &classified{kind: k, err: err}
}

// InvalidErr returns an Invalid error.
func InvalidErr(err error) error { return wrap(Invalid, err) }

// RolloutErr returns a Rollout error.
func RolloutErr(err error) error { return wrap(Rollout, err) }

// TransientErr returns a Transient error.
func TransientErr(err error) error { return wrap(Transient, err) }

// RefusedErr returns a Refused error.
func RefusedErr(err error) error { return wrap(Refused, err) }

// KindOf returns the outermost classification in err's chain, Unknown when there is none.
func KindOf(err error) Kind {
	var c *classified
	if errors.As(err, &c) {
		return c.kind
	}
	return Unknown
}
