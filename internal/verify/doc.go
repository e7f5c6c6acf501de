// Package verify turns the image references of a stack into digest-pinned, signature-verified copies.
//
// In: image references as written in a stack (`127.0.0.1:5000/app:v1`, `repo:tag@sha256:...`), a trust
// policy (Policy: glob patterns on the image repository mapped to public keys or keyless identities, each
// pattern enforce or warn) and registry options. Out: one Result per image — the digest that was verified,
// the reference to deploy (`repo:tag@sha256:...`), who signed it, and a status verified / warned / rejected
// with a reason — plus, when any enforce-mode image was rejected, an error classified fault.Refused.
//
// The steps per image: resolve the tag to a digest (a digest in the reference wins: only the digest counts),
// fetch the signatures attached to that digest in both cosign formats — the legacy `sha256-<hex>.sig` tag
// and cosign v3 Sigstore bundles found through the OCI 1.1 referrers API or its tag fallback — and verify
// them with the cosign v3 library against the authorities of the first matching policy rule. The signed
// payload must name the image digest (claim verifier), a v3 bundle must carry the cosign signature predicate
// (an attestation is not a signature), and keyless identities need transparency-log or RFC 3161 timestamp
// evidence. Everything fails closed: unsigned, wrong signer, registry errors, timeouts and malformed or
// oversized signature artifacts (every registry response is size-capped, the number of signatures bounded)
// reject the image. Registry 5xx / 429 / timeouts are additionally marked as *TransientError so a caller can
// retry later; they still refuse.
//
// Verified results are cached by (policy revision, repository, digest) with a TTL; VerifyAll runs the images
// concurrently with a bound.
//
// It imports internal/fault, go-containerregistry, cosign v3 and sigstore-go; no other internal package and
// no configuration reader (the Policy struct carries yaml/mapstructure tags so cmd/* can load it).
package verify
