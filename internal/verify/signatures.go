package verify

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v3/pkg/cosign"
	cbundle "github.com/sigstore/cosign/v3/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v3/pkg/oci"
	"github.com/sigstore/cosign/v3/pkg/oci/static"
	"github.com/sigstore/cosign/v3/pkg/types"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

const (
	bundleMediaTypePrefix = "application/vnd.dev.sigstore.bundle"
	emptyConfigMediaType  = "application/vnd.oci.empty.v1+json"
)

// verifySignatures fetches the signatures attached to the digest, legacy first, then v3 bundles, and
// returns the signers of the first format that any authority of the rule verifies. Errors are *Rejection.
func (v *Verifier) verifySignatures(ctx context.Context, d name.Digest, rule *compiledRule, ropts []remote.Option) ([]string, string, error) {
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		return nil, "", &Rejection{Ref: d.String(), Reason: "invalid digest", Err: err}
	}
	var problems []error
	found := 0

	sigs, lerr := v.legacySignatures(d, ropts)
	found += len(sigs)
	if lerr != nil {
		problems = append(problems, fmt.Errorf("legacy signatures: %w", lerr))
	} else if len(sigs) > 0 {
		signers, err := verifyLegacy(ctx, sigs, h, rule)
		if err == nil {
			return signers, FormatLegacy, nil
		}
		problems = append(problems, fmt.Errorf("legacy signatures: %w", err))
	}

	bundles, berr := v.bundles(d, ropts)
	found += len(bundles)
	if berr != nil {
		problems = append(problems, fmt.Errorf("bundles: %w", berr))
	} else if len(bundles) > 0 {
		signers, err := verifyBundles(ctx, bundles, h, rule)
		if err == nil {
			return signers, FormatBundle, nil
		}
		problems = append(problems, fmt.Errorf("bundles: %w", err))
	}

	joined := errors.Join(problems...)
	var tr *TransientError
	var tl *TooLargeError
	switch {
	case errors.As(joined, &tr):
		return nil, "", &Rejection{Ref: d.String(), Reason: "registry unavailable", Err: joined}
	case errors.As(joined, &tl):
		return nil, "", &Rejection{Ref: d.String(), Reason: "oversized signature artifact", Err: joined}
	case found == 0 && joined == nil:
		return nil, "", &Rejection{Ref: d.String(), Reason: "unsigned: no signature found"}
	case found == 0:
		return nil, "", &Rejection{Ref: d.String(), Reason: "malformed signature artifact", Err: joined}
	}
	return nil, "", &Rejection{Ref: d.String(), Reason: "no signature verified by a trusted authority", Err: joined}
}

// legacySignatures reads the sha256-<hex>.sig tag. A missing tag is no signatures, not an error.
func (v *Verifier) legacySignatures(d name.Digest, ropts []remote.Option) ([]oci.Signature, error) {
	tag := d.Context().Tag(strings.Replace(d.DigestStr(), ":", "-", 1) + ".sig")
	img, err := remote.Image(tag, ropts...)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, classify(err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, classify(err)
	}
	if len(m.Layers) > v.opts.MaxSignatures {
		return nil, &TooLargeError{Limit: int64(v.opts.MaxSignatures), What: fmt.Sprintf("signature count (%d)", len(m.Layers))}
	}
	var sigs []oci.Signature
	for _, desc := range m.Layers {
		b64 := desc.Annotations[static.SignatureAnnotationKey]
		if b64 == "" {
			continue // not a signature layer
		}
		payload, err := v.readLayer(img, desc)
		if err != nil {
			return nil, err
		}
		var opts []static.Option
		if cert := desc.Annotations[static.CertificateAnnotationKey]; cert != "" {
			opts = append(opts, static.WithCertChain([]byte(cert), []byte(desc.Annotations[static.ChainAnnotationKey])))
		}
		if b := desc.Annotations[static.BundleAnnotationKey]; b != "" {
			var rb cbundle.RekorBundle
			if err := json.Unmarshal([]byte(b), &rb); err != nil {
				return nil, fmt.Errorf("malformed rekor bundle annotation: %w", err)
			}
			opts = append(opts, static.WithBundle(&rb))
		}
		if ts := desc.Annotations[static.RFC3161TimestampAnnotationKey]; ts != "" {
			var t cbundle.RFC3161Timestamp
			if err := json.Unmarshal([]byte(ts), &t); err != nil {
				return nil, fmt.Errorf("malformed timestamp annotation: %w", err)
			}
			opts = append(opts, static.WithRFC3161Timestamp(&t))
		}
		sig, err := static.NewSignature(payload, b64, opts...)
		if err != nil {
			return nil, fmt.Errorf("malformed signature layer: %w", err)
		}
		sigs = append(sigs, sig)
	}
	return sigs, nil
}

// readLayer reads one blob of a signature artifact, bounded by MaxBytes.
func (v *Verifier) readLayer(img v1.Image, desc v1.Descriptor) ([]byte, error) {
	if desc.Size > v.opts.MaxBytes || desc.Size < 0 {
		return nil, &TooLargeError{Limit: v.opts.MaxBytes, What: fmt.Sprintf("signature layer (%d bytes)", desc.Size)}
	}
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return nil, classify(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, classify(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, v.opts.MaxBytes+1))
	if err != nil {
		return nil, classify(err)
	}
	if int64(len(b)) > v.opts.MaxBytes {
		return nil, &TooLargeError{Limit: v.opts.MaxBytes, What: "signature layer"}
	}
	return b, nil
}

// bundles lists the Sigstore bundles referring to the digest (referrers API, or the referrers tag fallback).
func (v *Verifier) bundles(d name.Digest, ropts []remote.Option) ([]*sgbundle.Bundle, error) {
	idx, err := remote.Referrers(d, ropts...)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, classify(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, classify(err)
	}
	var descs []v1.Descriptor
	for _, desc := range im.Manifests {
		// Some registries report the config media type (the OCI empty descriptor) instead of the
		// manifest's artifactType; those candidates are told apart by their layer below.
		switch {
		case strings.HasPrefix(desc.ArtifactType, bundleMediaTypePrefix),
			desc.ArtifactType == "", desc.ArtifactType == emptyConfigMediaType:
			descs = append(descs, desc)
		}
	}
	if len(descs) > v.opts.MaxSignatures {
		return nil, &TooLargeError{Limit: int64(v.opts.MaxSignatures), What: fmt.Sprintf("bundle count (%d)", len(descs))}
	}
	var out []*sgbundle.Bundle
	for _, desc := range descs {
		if desc.Size > v.opts.MaxBytes {
			return nil, &TooLargeError{Limit: v.opts.MaxBytes, What: "bundle manifest"}
		}
		img, err := remote.Image(d.Context().Digest(desc.Digest.String()), ropts...)
		if err != nil {
			return nil, classify(err)
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, classify(err)
		}
		if len(m.Layers) == 0 || !strings.HasPrefix(string(m.Layers[0].MediaType), bundleMediaTypePrefix) {
			continue // another kind of referrer (SBOM, ...)
		}
		if len(m.Layers) != 1 {
			return nil, fmt.Errorf("malformed bundle artifact %s: want one bundle layer", desc.Digest)
		}
		b, err := v.readLayer(img, m.Layers[0])
		if err != nil {
			return nil, err
		}
		var sb sgbundle.Bundle
		if err := sb.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("malformed bundle %s: %w", desc.Digest, err)
		}
		out = append(out, &sb)
	}
	return out, nil
}

// checkOpts builds cosign's options for one authority. Key-based checks skip the transparency log;
// keyless ones require the configured evidence and never fall back to the current time.
func checkOpts(a compiledAuthority, claims bool) *cosign.CheckOpts {
	co := &cosign.CheckOpts{Offline: true}
	if claims {
		co.ClaimVerifier = cosign.SimpleClaimVerifier
	}
	if a.verifier != nil {
		co.SigVerifier = a.verifier
		co.IgnoreTlog = true
		co.IgnoreSCT = true
		return co
	}
	k := a.keyless
	co.TrustedMaterial = k.trusted
	co.Identities = []cosign.Identity{{Issuer: k.issuer, Subject: k.subject, SubjectRegExp: k.subjectRegexp}}
	co.IgnoreSCT = k.ignoreSCT
	if k.evidence == EvidenceTimestamp {
		co.IgnoreTlog = true
		co.UseSignedTimestamps = true
	}
	return co
}

func verifyLegacy(ctx context.Context, sigs []oci.Signature, h v1.Hash, rule *compiledRule) ([]string, error) {
	var errs []error
	var signers []string
	for _, a := range rule.authorities {
		co := checkOpts(a, true)
		for _, sig := range sigs {
			if a.keyless != nil {
				// cosign's legacy path checks the certificate against the roots and the identities.
				if err := legacyKeylessPrecheck(sig, a.keyless); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", a.name, err))
					continue
				}
			}
			if _, err := cosign.VerifyImageSignature(ctx, sig, h, co); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.name, err))
				continue
			}
			signers = append(signers, signerName(a, sigCertSummary(sig)))
			break
		}
	}
	if len(signers) == 0 {
		return nil, errors.Join(errs...)
	}
	return signers, nil
}

// legacyKeylessPrecheck makes the evidence requirement explicit for legacy signatures: cosign would
// otherwise accept a certificate checked against the current time when the log is skipped.
func legacyKeylessPrecheck(sig oci.Signature, k *compiledKeyless) error {
	switch k.evidence {
	case EvidenceTimestamp:
		ts, err := sig.RFC3161Timestamp()
		if err != nil || ts == nil {
			return errors.New("keyless signature has no RFC 3161 timestamp")
		}
	default:
		b, err := sig.Bundle()
		if err != nil || b == nil {
			return errors.New("keyless signature has no transparency-log bundle")
		}
	}
	return nil
}

func sigCertSummary(sig oci.Signature) *certificate.Summary {
	cert, err := sig.Cert()
	if err != nil || cert == nil {
		return nil
	}
	s, err := certificate.SummarizeCertificate(cert)
	if err != nil {
		sans := cryptoutils.GetSubjectAlternateNames(cert)
		if len(sans) == 0 {
			return nil
		}
		return &certificate.Summary{SubjectAlternativeName: sans[0]}
	}
	return &s
}

func signerName(a compiledAuthority, s *certificate.Summary) string {
	if a.keyless != nil && s != nil {
		iss := s.Issuer
		if iss == "" {
			iss = s.CertificateIssuer
		}
		id := fmt.Sprintf("keyless issuer=%s subject=%s", iss, s.SubjectAlternativeName)
		if a.named {
			return a.name + " (" + id + ")"
		}
		return id
	}
	return a.name
}

func verifyBundles(ctx context.Context, bundles []*sgbundle.Bundle, h v1.Hash, rule *compiledRule) ([]string, error) {
	digestBytes, err := hex.DecodeString(h.Hex)
	if err != nil {
		return nil, err
	}
	policy := sgverify.WithArtifactDigest(h.Algorithm, digestBytes)
	var errs []error
	var signers []string
	for _, a := range rule.authorities {
		co := checkOpts(a, false)
		for _, b := range bundles {
			if b.GetDsseEnvelope() == nil {
				errs = append(errs, fmt.Errorf("%s: bundle is not a DSSE envelope", a.name))
				continue
			}
			vr, err := cosign.VerifyNewBundle(ctx, co, policy, b)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.name, err))
				continue
			}
			// An attestation (SLSA provenance, SBOM...) signed by the same key is not a signature.
			if vr.Statement == nil || vr.Statement.GetPredicateType() != types.CosignSignPredicateType {
				pt := ""
				if vr.Statement != nil {
					pt = vr.Statement.GetPredicateType()
				}
				errs = append(errs, fmt.Errorf("%s: bundle is an attestation (predicate %q), not a signature", a.name, pt))
				continue
			}
			if !statementNamesDigest(vr, h) {
				errs = append(errs, fmt.Errorf("%s: signed statement does not name digest %s", a.name, h))
				continue
			}
			var s *certificate.Summary
			if vr.Signature != nil {
				s = vr.Signature.Certificate
			}
			signers = append(signers, signerName(a, s))
			break
		}
	}
	if len(signers) == 0 {
		return nil, errors.Join(errs...)
	}
	return signers, nil
}

// statementNamesDigest double-checks the claim: a subject of the verified statement has the image digest.
func statementNamesDigest(vr *sgverify.VerificationResult, h v1.Hash) bool {
	for _, s := range vr.Statement.GetSubject() {
		if s.GetDigest()[h.Algorithm] == h.Hex {
			return true
		}
	}
	return false
}

// cappedTransport bounds every registry response body: a registry (or whoever controls a signature
// tag) cannot make the agent read more than limit bytes per request.
type cappedTransport struct {
	next  http.RoundTripper
	limit int64
}

func (t *cappedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.limit {
		resp.Body.Close()
		return nil, &TooLargeError{Limit: t.limit, What: fmt.Sprintf("registry response for %s (%d bytes)", req.URL.Path, resp.ContentLength)}
	}
	resp.Body = &cappedBody{rc: resp.Body, left: t.limit, limit: t.limit, path: req.URL.Path}
	return resp, nil
}

type cappedBody struct {
	rc    io.ReadCloser
	left  int64
	limit int64
	path  string
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// Probe for one more byte: exactly limit bytes is fine.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, &TooLargeError{Limit: b.limit, What: "registry response for " + b.path}
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }
