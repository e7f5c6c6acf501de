package verify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Rejection is why one image was refused. Reason is short and meant for people (plan output); Err is the
// underlying error, which may be a *TransientError.
type Rejection struct {
	Ref    string
	Reason string
	Err    error
}

func (e *Rejection) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("%s: %s", e.Ref, e.Reason)
	}
	return fmt.Sprintf("%s: %s: %v", e.Ref, e.Reason, e.Err)
}

func (e *Rejection) Unwrap() error { return e.Err }

// TransientError marks a failure that may go away by itself: a registry 5xx or 429, a timeout, a network
// error. The image is refused all the same (fail closed); a caller may retry later with backoff.
type TransientError struct {
	Err error
}

func (e *TransientError) Error() string { return "transient: " + e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// IsTransient reports whether err (for example VerifyAll's error) contains a TransientError.
func IsTransient(err error) bool {
	var t *TransientError
	return errors.As(err, &t)
}

// TooLargeError is returned when a registry response or signature artifact exceeds the configured cap.
type TooLargeError struct {
	Limit int64
	What  string
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s exceeds the %d-byte limit", e.What, e.Limit)
}

// classify wraps registry/network errors that may be temporary in a TransientError.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var tl *TooLargeError
	if errors.As(err, &tl) {
		return err
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		if terr.StatusCode >= 500 || terr.StatusCode == http.StatusTooManyRequests || terr.StatusCode == http.StatusRequestTimeout {
			return &TransientError{Err: err}
		}
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &TransientError{Err: err}
	}
	var nerr net.Error
	if errors.As(err, &nerr) {
		return &TransientError{Err: err}
	}
	return err
}

func isNotFound(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}
