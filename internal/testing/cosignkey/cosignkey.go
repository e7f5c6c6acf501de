// Package cosignkey makes an ECDSA P-256 signing key in memory and signs image digests with it the way
// `cosign sign --key ... --new-bundle-format=false` does (a simple-signing payload naming the digest, in a
// layer of the `sha256-<hex>.sig` tag). The local demo and the tests use it; the pipelines use the cosign
// CLI. The private key never leaves memory.
//
// In: a digest reference. Out: the signature pushed to the image's repository. Imports sigstore's
// signature packages, cosign's annotation key and go-containerregistry.
package cosignkey

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"

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

// Key is a signing key.
type Key struct {
	sv *signature.ECDSASignerVerifier
	// PublicPEM is the public key, as a trust policy names it.
	PublicPEM string
}

// Generate makes a new key.
func Generate() (*Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return nil, err
	}
	return &Key{sv: sv, PublicPEM: string(pub)}, nil
}

// Sign signs digestRef (repo@sha256:...) and pushes the signature. Registries on loopback are spoken to
// over plain HTTP.
func (k *Key) Sign(digestRef string, opts ...remote.Option) error {
	d, err := name.NewDigest(digestRef, name.Insecure)
	if err != nil {
		return fmt.Errorf("sign %q: %w", digestRef, err)
	}
	p, err := (&payload.Cosign{Image: d}).MarshalJSON()
	if err != nil {
		return err
	}
	sig, err := k.sv.SignMessage(bytes.NewReader(p))
	if err != nil {
		return err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer(p, "application/vnd.dev.cosign.simplesigning.v1+json"),
		Annotations: map[string]string{cstatic.SignatureAnnotationKey: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		return err
	}
	tag := d.Context().Tag(strings.Replace(d.DigestStr(), ":", "-", 1) + ".sig")
	if err := remote.Write(tag, img, opts...); err != nil {
		return fmt.Errorf("push signature of %s: %w", digestRef, err)
	}
	return nil
}
