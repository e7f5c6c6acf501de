package verify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	cbundle "github.com/sigstore/cosign/v3/pkg/cosign/bundle"
	ociremote "github.com/sigstore/cosign/v3/pkg/oci/remote"
	cstatic "github.com/sigstore/cosign/v3/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v3/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
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
func virtualSigstore(t testing.TB) (*ca.VirtualSigstore, string) {
	t.Helper()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	// The virtual logs carry their hex log ID as the raw ID; the trusted_root.json wants the raw bytes.
	fixIDs := func(logs map[string]*root.TransparencyLog) map[string]*root.TransparencyLog {
		for id, l := range logs {
			raw, err := hex.DecodeString(id)
			if err != nil {
				t.Fatal(err)
			}
			l.ID = raw
		}
		return logs
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, vs.FulcioCertificateAuthorities(), fixIDs(vs.CTLogs()),
		vs.TimestampingAuthorities(), fixIDs(vs.RekorLogs()))
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
func signKeyless(t *testing.T, vs *ca.VirtualSigstore, d name.Digest, identity, issuer string, withTimestamp bool, withRekor ...bool) {
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
	if len(withRekor) > 0 && withRekor[0] {
		pb.VerificationMaterial.TlogEntries = append(pb.VerificationMaterial.TlogEntries, dsseTlogEntry(t, vs, cert, pb))
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
// With rekor, the evidence is a Rekor bundle (hashedrekord entry and signed entry timestamp) instead.
func signKeylessLegacy(t *testing.T, vs *ca.VirtualSigstore, d name.Digest, identity, issuer string, rekor bool) {
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
	certPEM, err := cryptoutils.MarshalCertificateToPEM(cert)
	if err != nil {
		t.Fatal(err)
	}
	ann := map[string]string{
		cstatic.SignatureAnnotationKey:   base64.StdEncoding.EncodeToString(sig),
		cstatic.CertificateAnnotationKey: string(certPEM),
	}
	if rekor {
		body, err := json.Marshal(map[string]any{"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": map[string]any{
			"data": map[string]any{"hash": map[string]string{"algorithm": "sha256", "value": hex.EncodeToString(h[:])}},
			"signature": map[string]any{"content": base64.StdEncoding.EncodeToString(sig),
				"publicKey": map[string]string{"content": base64.StdEncoding.EncodeToString(certPEM)}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		logID, err := vs.RekorLogID()
		if err != nil {
			t.Fatal(err)
		}
		rp := tlog.RekorPayload{Body: base64.StdEncoding.EncodeToString(body), IntegratedTime: time.Now().Unix(), LogID: logID}
		set, err := vs.RekorSignPayload(rp)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := json.Marshal(cbundle.RekorBundle{SignedEntryTimestamp: set, Payload: cbundle.RekorPayload{
			Body: rp.Body, IntegratedTime: rp.IntegratedTime, LogIndex: rp.LogIndex, LogID: rp.LogID}})
		if err != nil {
			t.Fatal(err)
		}
		ann[cstatic.BundleAnnotationKey] = string(rb)
	} else {
		tsr, err := vs.TimestampResponse(sig)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := json.Marshal(cbundle.RFC3161Timestamp{SignedRFC3161Timestamp: tsr})
		if err != nil {
			t.Fatal(err)
		}
		ann[cstatic.RFC3161TimestampAnnotationKey] = string(ts)
	}
	pushSigImage(t, d, ".sig", sigLayer{payload: p, mediaType: "application/vnd.dev.cosign.simplesigning.v1+json", annotations: ann})
}

// dsseTlogEntry is a Rekor v1 dsse entry for the bundle's envelope from the virtual Rekor, with inclusion
// proof and signed entry timestamp.
func dsseTlogEntry(t *testing.T, vs *ca.VirtualSigstore, cert *x509.Certificate, pb *protobundle.Bundle) *protorekor.TransparencyLogEntry {
	t.Helper()
	env := pb.GetDsseEnvelope()
	sig := env.GetSignatures()[0].GetSig()
	now := time.Now().Unix()
	e, err := vs.GenerateTlogEntry(cert, &dsse.Envelope{
		PayloadType: env.GetPayloadType(),
		Payload:     base64.StdEncoding.EncodeToString(env.GetPayload()),
		Signatures:  []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}},
	}, sig, now, true)
	if err != nil {
		t.Fatal(err)
	}
	logID, err := vs.RekorLogID()
	if err != nil {
		t.Fatal(err)
	}
	set, err := vs.RekorSignPayload(tlog.RekorPayload{Body: e.Body(), IntegratedTime: now, LogIndex: e.LogIndex(), LogID: logID})
	if err != nil {
		t.Fatal(err)
	}
	tle := e.TransparencyLogEntry()
	tle.KindVersion = &protorekor.KindVersion{Kind: "dsse", Version: "0.0.1"}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	return tle
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
	signKeylessLegacy(t, vs, legacy, subject, issuer, false)
	rekorBundle := reg.pushImage(t, "group/rekorbundle", "v1")
	signKeyless(t, vs, rekorBundle, subject, issuer, false, true)
	rekord := reg.pushImage(t, "group/rekor", "v1")
	signKeylessLegacy(t, vs, rekord, subject, issuer, true)
	noTS := reg.pushImage(t, "group/nots", "v1")
	signKeyless(t, vs, noTS, subject, issuer, false)

	policy := func(k Keyless) *Trust {
		t.Helper()
		k.TrustedRoot = rootPath
		k.IgnoreSCT = true // the virtual Fulcio embeds no SCT
		if k.Evidence == "" {
			k.Evidence = EvidenceTimestamp
		}
		tr, err := TrustPolicy{Rules: []Rule{{Pattern: reg.host + "/group/*", Authorities: []Authority{{Keyless: &k}}}}}.Compile()
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
	t.Run("rekor evidence (bundle)", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: subject, Evidence: EvidenceTlog}), nil).Verify(ctx(t), reg.host+"/group/rekorbundle:v1")
		mustVerified(t, r, err)
		r, err = newVerifier(policy(Keyless{Issuer: issuer, Subject: subject, Evidence: EvidenceTimestamp}), nil).Verify(ctx(t), reg.host+"/group/rekorbundle:v1")
		mustRejected(t, r, err, "no signature verified")
		r, err = newVerifier(policy(Keyless{Issuer: issuer, Subject: "x@gitlab.example", Evidence: EvidenceTlog}), nil).Verify(ctx(t), reg.host+"/group/rekorbundle:v1")
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("rekor evidence (legacy format)", func(t *testing.T) {
		r, err := newVerifier(policy(Keyless{Issuer: issuer, Subject: subject, Evidence: EvidenceTlog}), nil).Verify(ctx(t), reg.host+"/group/rekor:v1")
		mustVerified(t, r, err)
		r, err = newVerifier(policy(Keyless{Issuer: issuer, Subject: subject, Evidence: EvidenceTimestamp}), nil).Verify(ctx(t), reg.host+"/group/rekor:v1")
		mustRejected(t, r, err, "no signature verified")
		r, err = newVerifier(policy(Keyless{Issuer: "https://gitlab.com", Subject: subject, Evidence: EvidenceTlog}), nil).Verify(ctx(t), reg.host+"/group/rekor:v1")
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
		tr, err := TrustPolicy{Rules: []Rule{{Pattern: reg.host + "/group/*", Authorities: []Authority{{Keyless: &k}}}}}.Compile()
		if err != nil {
			t.Fatal(err)
		}
		r, err := newVerifier(tr, nil).Verify(ctx(t), ref)
		mustRejected(t, r, err, "no signature verified")
	})
}
