package verify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	cbundle "github.com/sigstore/cosign/v3/pkg/cosign/bundle"
	ociremote "github.com/sigstore/cosign/v3/pkg/oci/remote"
	cstatic "github.com/sigstore/cosign/v3/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v3/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
)

// certKeypair signs with the private key of a certificate issued by the virtual Fulcio.
type certKeypair struct {
	priv *ecdsa.PrivateKey
	cert *x509.Certificate
}

func (k *certKeypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (k *certKeypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}
func (k *certKeypair) GetHint() []byte                { return nil }
func (k *certKeypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (k *certKeypair) GetPublicKey() crypto.PublicKey { return k.priv.Public() }
func (k *certKeypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.priv.Public())
	return string(b), err
}
func (k *certKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	h := sha256.Sum256(data)
	sig, err := ecdsa.SignASN1(rand.Reader, k.priv, h[:])
	return sig, h[:], err
}
func (k *certKeypair) GetCertificate(context.Context, sign.Keypair, *sign.CertificateProviderOptions) ([]byte, error) {
	return k.cert.Raw, nil
}

// virtualSigstore is an in-memory Fulcio CA, TSA, Rekor and CT log with its trusted_root.json on disk.
func virtualSigstore(t *testing.T) (*ca.VirtualSigstore, string) {
	t.Helper()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, vs.FulcioCertificateAuthorities(), vs.CTLogs(),
		vs.TimestampingAuthorities(), vs.RekorLogs())
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/trusted_root.json"
	writeFile(t, path, string(b))
	return vs, path
}

// signKeyless signs d as identity/issuer with a virtual Fulcio certificate, adds an RFC 3161 timestamp
// from the virtual TSA when withTimestamp, and attaches the bundle as a referrer.
func signKeyless(t *testing.T, vs *ca.VirtualSigstore, d name.Digest, identity, issuer string, withTimestamp bool) {
	t.Helper()
	cert, priv, err := vs.GenerateLeafCert(identity, issuer)
	if err != nil {
		t.Fatal(err)
	}
	kp := &certKeypair{priv: priv.(*ecdsa.PrivateKey), cert: cert}
	pb, err := sign.Bundle(&sign.DSSEData{Data: statement(t, d, ctypes.CosignSignPredicateType), PayloadType: "application/vnd.in-toto+json"},
		kp, sign.BundleOptions{CertificateProvider: kp})
	if err != nil {
		t.Fatal(err)
	}
	if withTimestamp {
		tsr, err := vs.TimestampResponse(pb.GetDsseEnvelope().GetSignatures()[0].GetSig())
		if err != nil {
			t.Fatal(err)
		}
		pb.VerificationMaterial.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: tsr}},
		}
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestationNewBundleFormat(d, b, ctypes.CosignSignPredicateType); err != nil {
		t.Fatal(err)
	}
}

// signKeylessLegacy signs d in the legacy .sig format with a virtual Fulcio certificate and an RFC 3161
// timestamp over the signature, as `cosign sign --new-bundle-format=false --timestamp-server-url` would.
func signKeylessLegacy(t *testing.T, vs *ca.VirtualSigstore, d name.Digest, identity, issuer string) {
	t.Helper()
	cert, priv, err := vs.GenerateLeafCert(identity, issuer)
	if err != nil {
		t.Fatal(err)
	}
	p, err := (&payload.Cosign{Image: d}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(p)
	sig, err := ecdsa.SignASN1(rand.Reader, priv.(*ecdsa.PrivateKey), h[:])
	if err != nil {
		t.Fatal(err)
	}
	tsr, err := vs.TimestampResponse(sig)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := json.Marshal(cbundle.RFC3161Timestamp{SignedRFC3161Timestamp: tsr})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := cryptoutils.MarshalCertificateToPEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	pushSigImage(t, d, ".sig", sigLayer{payload: p, mediaType: "application/vnd.dev.cosign.simplesigning.v1+json",
		annotations: map[string]string{
			cstatic.SignatureAnnotationKey:        base64.StdEncoding.EncodeToString(sig),
			cstatic.CertificateAnnotationKey:      string(certPEM),
			cstatic.RFC3161TimestampAnnotationKey: string(ts),
		}})
}

func TestKeyless(t *testing.T) {
	reg := newRegistry(t, true)
	vs, rootPath := virtualSigstore(t)
	const (
		issuer  = "https://gitlab.example"
		subject = "ci@gitlab.example"
	)
	d := reg.pushImage(t, "group/app", "v1")
	signKeyless(t, vs, d, subject, issuer, true)
	legacy := reg.pushImage(t, "group/legacy", "v1")
	signKeylessLegacy(t, vs, legacy, subject, issuer)
	noTS := reg.pushImage(t, "group/nots", "v1")
	signKeyless(t, vs, noTS, subject, issuer, false)

	policy := func(k Keyless) *Trust {
		t.Helper()
		k.TrustedRoot = rootPath
		k.IgnoreSCT = true // the virtual Fulcio embeds no SCT
		if k.Evidence == "" {
			k.Evidence = EvidenceTimestamp
		}
		tr, err := Policy{Rules: []Rule{{Pattern: reg.host + "/group/*", Authorities: []Authority{{Keyless: &k}}}}}.Compile()
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	ref := reg.host + "/group/app:v1"

	t.Run("right identity", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: subject}), nil).Verify(ctx(t), ref)
		mustVerified(t, r, err)
		if len(r.Signers) != 1 || r.Format != FormatBundle {
			t.Errorf("signers %v format %s", r.Signers, r.Format)
		}
		t.Log(r.Signers)
	})
	t.Run("legacy format", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: subject}), nil).Verify(ctx(t), reg.host+"/group/legacy:v1")
		mustVerified(t, r, err)
		if r.Format != FormatLegacy {
			t.Errorf("format %s", r.Format)
		}
		r, err = newVerifier(policy(Keyless{Issuer: issuer, Subject: "other@gitlab.example"}), nil).Verify(ctx(t), reg.host+"/group/legacy:v1")
		mustRejected(t, r, err, "no signature verified")
		r, err = newVerifier(policy(Keyless{Issuer: issuer, Subject: subject, Evidence: EvidenceTlog}), nil).Verify(ctx(t), reg.host+"/group/legacy:v1")
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("anchored subject regexp", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, SubjectRegexp: `^ci@gitlab\.example$`}), nil).Verify(ctx(t), ref)
		mustVerified(t, r, err)
	})
	t.Run("wrong issuer", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: "https://gitlab.com", Subject: subject}), nil).Verify(ctx(t), ref)
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("wrong subject", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: "someone@gitlab.example"}), nil).Verify(ctx(t), ref)
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("subject regexp that would match only unanchored", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, SubjectRegexp: `^gitlab\.example$`}), nil).Verify(ctx(t), ref)
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("no timestamp evidence", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: subject}), nil).Verify(ctx(t), reg.host+"/group/nots:v1")
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("tlog evidence required but absent", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: subject, Evidence: EvidenceTlog}), nil).Verify(ctx(t), ref)
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("another sigstore's root", func(t *testing.T) {
		_, otherRoot := virtualSigstore(t)
		k := Keyless{Issuer: issuer, Subject: subject, TrustedRoot: otherRoot, IgnoreSCT: true, Evidence: EvidenceTimestamp}
		tr, err := Policy{Rules: []Rule{{Pattern: reg.host + "/group/*", Authorities: []Authority{{Keyless: &k}}}}}.Compile()
		if err != nil {
			t.Fatal(err)
		}
		r, err := newVerifier(tr, nil).Verify(ctx(t), ref)
		mustRejected(t, r, err, "no signature verified")
	})
}
