package testenv

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	cstatic "github.com/sigstore/cosign/v3/pkg/oci/static"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

// Key is a signing key generated for one test; nothing of it is ever written to disk by this package.
type Key struct {
	sv *signature.ECDSASignerVerifier
	// PublicPEM is the public key, as a trust policy names it.
	PublicPEM string
}

// NewKey generates an ECDSA P-256 key.
func NewKey(t testing.TB) Key {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return Key{sv: sv, PublicPEM: string(pub)}
}

// Sign signs digestRef (repo@sha256:...) with k the way `cosign sign --key --new-bundle-format=false` does:
// a simple-signing payload naming the digest, in a layer of the `sha256-<hex>.sig` tag.
func (k Key) Sign(t testing.TB, digestRef string) {
	t.Helper()
	d, err := name.NewDigest(digestRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	p, err := (&payload.Cosign{Image: d}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := k.sv.SignMessage(bytes.NewReader(p))
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer(p, "application/vnd.dev.cosign.simplesigning.v1+json"),
		Annotations: map[string]string{cstatic.SignatureAnnotationKey: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	tag := d.Context().Tag(strings.Replace(d.DigestStr(), ":", "-", 1) + ".sig")
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}
