package testenv

import (
	"testing"

	"github.com/sabeiro/sawmill/internal/testing/cosignkey"
)

// Key is a signing key generated for one test.
type Key struct {
	k *cosignkey.Key
	// PublicPEM is the public key, as a trust policy names it.
	PublicPEM string
}

// NewKey generates a key.
func NewKey(t testing.TB) Key {
	t.Helper()
	k, err := cosignkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return Key{k: k, PublicPEM: k.PublicPEM}
}

// Sign signs digestRef (repo@sha256:...) in cosign's legacy format.
func (k Key) Sign(t testing.TB, digestRef string) {
	t.Helper()
	if err := k.k.Sign(digestRef); err != nil {
		t.Fatal(err)
	}
}
