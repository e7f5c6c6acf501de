package verify

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ctypes "github.com/sigstore/cosign/v3/pkg/types"
	"github.com/sigstore/sigstore-go/pkg/sign"

	"github.com/sabeiro/sawmill/internal/fault"
)

func newVerifier(trust *Trust, clock *fakeClock) *Verifier {
	o := Options{Retry: fastRetry(), Timeout: 5 * time.Second}
	if clock != nil {
		o.Now = clock.Now
	}
	return New(trust, o)
}

func mustVerified(t *testing.T, r Result, err error) {
	t.Helper()
	if err != nil || r.Status != Verified {
		t.Fatalf("want verified, got %s (%s), err %v", r.Status, r.Reason, err)
	}
}

func mustRejected(t *testing.T, r Result, err error, reason string) {
	t.Helper()
	if r.Status != Rejected {
		t.Fatalf("want rejected, got %s (%s)", r.Status, r.Reason)
	}
	if fault.KindOf(err) != fault.Refused {
		t.Fatalf("want a Refused error, got %v (kind %v)", err, fault.KindOf(err))
	}
	var rj *Rejection
	if !errors.As(err, &rj) {
		t.Fatalf("want a *Rejection in %v", err)
	}
	if !strings.Contains(r.Reason, reason) {
		t.Fatalf("want reason containing %q, got %q", reason, r.Reason)
	}
}

func TestLegacySignatureVerifiesOverPlainHTTP(t *testing.T) {
	reg := newRegistry(t, false)
	k := newKey(t)
	d := reg.pushImage(t, "app", "v1")
	signLegacy(t, k, d)

	v := newVerifier(keyPolicy(t, reg.host, Enforce, k), nil)
	ref := reg.host + "/app:v1"
	r, err := v.Verify(ctx(t), ref)
	mustVerified(t, r, err)
	if r.Digest != d.DigestStr() {
		t.Errorf("digest %s, want %s", r.Digest, d.DigestStr())
	}
	if want := ref + "@" + d.DigestStr(); r.Pinned != want {
		t.Errorf("pinned %s, want %s", r.Pinned, want)
	}
	if r.Format != FormatLegacy || len(r.Signers) != 1 || !strings.HasPrefix(r.Signers[0], "key:sha256:") {
		t.Errorf("format %s signers %v", r.Format, r.Signers)
	}
	if r.Rule != reg.host+"/**" {
		t.Errorf("rule %q", r.Rule)
	}
}

func TestBundleViaReferrersAPI(t *testing.T) {
	reg := newRegistry(t, true)
	kp, pub := newBundleKey(t)
	d := reg.pushImage(t, "app", "v1")
	signBundle(t, kp, d, ctypes.CosignSignPredicateType, sign.BundleOptions{})

	v := newVerifier(keyPolicy(t, reg.host, Enforce, testKey{pem: pub}), nil)
	r, err := v.Verify(ctx(t), reg.host+"/app:v1")
	mustVerified(t, r, err)
	if r.Format != FormatBundle {
		t.Errorf("format %s", r.Format)
	}
}

func TestBundleViaReferrersTagFallback(t *testing.T) {
	reg := newRegistry(t, false) // no referrers API: writers and readers use the sha256-<hex> index tag
	kp, pub := newBundleKey(t)
	d := reg.pushImage(t, "app", "v1")
	signBundle(t, kp, d, ctypes.CosignSignPredicateType, sign.BundleOptions{})

	v := newVerifier(keyPolicy(t, reg.host, Enforce, testKey{pem: pub}), nil)
	r, err := v.Verify(ctx(t), reg.host+"/app:v1")
	mustVerified(t, r, err)
	if r.Format != FormatBundle {
		t.Errorf("format %s", r.Format)
	}
}

func TestRefused(t *testing.T) {
	reg := newRegistry(t, true)
	trusted, other := newKey(t), newKey(t)
	trust := keyPolicy(t, reg.host, Enforce, trusted)

	t.Run("unsigned", func(t *testing.T) {
		reg.pushImage(t, "unsigned", "v1")
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/unsigned:v1")
		mustRejected(t, r, err, "unsigned")
		if IsTransient(err) {
			t.Error("unsigned is not transient")
		}
	})
	t.Run("other key", func(t *testing.T) {
		d := reg.pushImage(t, "otherkey", "v1")
		signLegacy(t, other, d)
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/otherkey:v1")
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("bundle by other key", func(t *testing.T) {
		d := reg.pushImage(t, "otherbundle", "v1")
		kp, _ := newBundleKey(t)
		signBundle(t, kp, d, ctypes.CosignSignPredicateType, sign.BundleOptions{})
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/otherbundle:v1")
		mustRejected(t, r, err, "no signature verified")
	})
	t.Run("retagged", func(t *testing.T) {
		a := reg.pushImage(t, "retag", "v1")
		signLegacy(t, trusted, a)
		v := newVerifier(trust, nil)
		r, err := v.Verify(ctx(t), reg.host+"/retag:v1")
		mustVerified(t, r, err)
		b := reg.pushImage(t, "retag", "v1") // unsigned B takes over the tag
		r, err = v.Verify(ctx(t), reg.host+"/retag:v1")
		mustRejected(t, r, err, "unsigned")
		if r.Digest != b.DigestStr() {
			t.Errorf("verified digest %s, want the tag's new digest %s", r.Digest, b.DigestStr())
		}
	})
	t.Run("signature copied from another digest", func(t *testing.T) {
		a := reg.pushImage(t, "copied", "a")
		b := reg.pushImage(t, "copied", "b")
		pushSigImage(t, b, ".sig", legacyLayer(t, trusted, a)) // valid signature, but over A's digest
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/copied:b")
		mustRejected(t, r, err, "no signature verified")
		if !strings.Contains(r.Reason, "digest") {
			t.Errorf("reason should name the digest claim: %s", r.Reason)
		}
	})
	t.Run("tag@digest: only the digest counts", func(t *testing.T) {
		a := reg.pushImage(t, "pinned", "v1")
		signLegacy(t, trusted, a)
		b := reg.pushImage(t, "pinned", "v1") // the tag now points to unsigned B
		v := newVerifier(trust, nil)
		r, err := v.Verify(ctx(t), reg.host+"/pinned:v1@"+a.DigestStr())
		mustVerified(t, r, err)
		if r.Digest != a.DigestStr() || r.Pinned != reg.host+"/pinned:v1@"+a.DigestStr() {
			t.Errorf("digest %s pinned %s", r.Digest, r.Pinned)
		}
		r, err = v.Verify(ctx(t), reg.host+"/pinned:v1@"+b.DigestStr())
		mustRejected(t, r, err, "unsigned")
		c := reg.pushImage(t, "pinned2", "v1")
		signLegacy(t, trusted, c)
		r, err = v.Verify(ctx(t), reg.host+"/pinned2:v1@"+b.DigestStr()) // signed tag, unsigned digest
		mustRejected(t, r, err, "")
	})
	t.Run("attestation but no signature", func(t *testing.T) {
		d := reg.pushImage(t, "attested", "v1")
		// legacy attestation tag, DSSE signed by the trusted key
		pushSigImage(t, d, ".att", signedLayer(t, trusted, statement(t, d, "https://slsa.dev/provenance/v1")))
		// v3 bundle attestation by a trusted key
		kp, pub := newBundleKey(t)
		signBundle(t, kp, d, "https://slsa.dev/provenance/v1", sign.BundleOptions{})
		tr := keyPolicy(t, reg.host, Enforce, trusted, testKey{pem: pub})
		r, err := newVerifier(tr, nil).Verify(ctx(t), reg.host+"/attested:v1")
		mustRejected(t, r, err, "no signature verified")
		if !strings.Contains(r.Reason, "attestation") {
			t.Errorf("reason should say attestation: %s", r.Reason)
		}
	})
}

func TestMalformedAndOversizedArtifacts(t *testing.T) {
	reg := newRegistry(t, true)
	k := newKey(t)
	trust := keyPolicy(t, reg.host, Enforce, k)
	t.Run("oversized signature layer", func(t *testing.T) {
		d := reg.pushImage(t, "big", "v1")
		l := legacyLayer(t, k, d)
		l.payload = append(l.payload, make([]byte, 2<<20)...)
		pushSigImage(t, d, ".sig", l)
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/big:v1")
		mustRejected(t, r, err, "oversized")
	})
	t.Run("oversized manifest", func(t *testing.T) {
		d := reg.pushImage(t, "bigmanifest", "v1")
		l := legacyLayer(t, k, d)
		l.annotations["padding"] = strings.Repeat("x", 2<<20)
		pushSigImage(t, d, ".sig", l)
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/bigmanifest:v1")
		mustRejected(t, r, err, "oversized")
	})
	t.Run("too many signatures", func(t *testing.T) {
		d := reg.pushImage(t, "many", "v1")
		var ls []sigLayer
		for i := 0; i < 17; i++ {
			l := legacyLayer(t, k, d)
			l.payload = append(l.payload, []byte(fmt.Sprintf("%*s", i, ""))...)
			ls = append(ls, l)
		}
		pushSigImage(t, d, ".sig", ls...)
		r, err := New(trust, Options{Retry: fastRetry(), MaxSignatures: 16}).Verify(ctx(t), reg.host+"/many:v1")
		mustRejected(t, r, err, "oversized")
	})
	t.Run("deeply nested payload signed by the trusted key", func(t *testing.T) {
		d := reg.pushImage(t, "nested", "v1")
		depth := 400_000
		p := []byte(`{"critical":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`)
		pushSigImage(t, d, ".sig", signedLayer(t, k, p))
		start := time.Now()
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/nested:v1")
		mustRejected(t, r, err, "no signature verified")
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("took %s", el)
		}
	})
	t.Run("garbage bundle", func(t *testing.T) {
		d := reg.pushImage(t, "garbage", "v1")
		kp, _ := newBundleKey(t)
		_ = kp
		if err := writeRawBundle(d, []byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","x":`+strings.Repeat("[", 100000)+`}`)); err != nil {
			t.Fatal(err)
		}
		r, err := newVerifier(trust, nil).Verify(ctx(t), reg.host+"/garbage:v1")
		mustRejected(t, r, err, "malformed")
	})
}

func TestRegistryFailuresRefuseAndAreTransient(t *testing.T) {
	reg := newRegistry(t, true)
	k := newKey(t)
	d := reg.pushImage(t, "app", "v1")
	signLegacy(t, k, d)
	trust := keyPolicy(t, reg.host, Enforce, k)

	for _, tc := range []struct {
		name   string
		status int
		hang   bool
		where  string
	}{
		{"503 on tag resolution", http.StatusServiceUnavailable, false, "/manifests/v1"},
		{"500 on signature", http.StatusInternalServerError, false, ".sig"},
		{"429 on signature", http.StatusTooManyRequests, false, ".sig"},
		{"timeout on signature", 0, true, ".sig"},
		{"timeout on referrers", 0, true, "/referrers/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg.setInject(func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.Contains(r.URL.Path, tc.where) {
					return false
				}
				if tc.hang {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
					return true
				}
				w.WriteHeader(tc.status)
				return true
			})
			defer reg.setInject(nil)
			v := New(trust, Options{Retry: fastRetry(), Timeout: 300 * time.Millisecond})
			r, err := v.Verify(ctx(t), reg.host+"/app:v1")
			if tc.where == "/referrers/" {
				// the legacy signature verifies before the referrers are asked: a hang there is harmless
				mustVerified(t, r, err)
				return
			}
			mustRejected(t, r, err, "")
			if !IsTransient(err) {
				t.Errorf("want transient, got %v", err)
			}
		})
	}

	t.Run("referrers failure on an image signed only by bundle", func(t *testing.T) {
		kp, pub := newBundleKey(t)
		d2 := reg.pushImage(t, "bundled", "v1")
		signBundle(t, kp, d2, ctypes.CosignSignPredicateType, sign.BundleOptions{})
		reg.setInject(func(w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.URL.Path, "/referrers/") {
				w.WriteHeader(http.StatusBadGateway)
				return true
			}
			return false
		})
		defer reg.setInject(nil)
		v := New(keyPolicy(t, reg.host, Enforce, testKey{pem: pub}), Options{Retry: fastRetry()})
		r, err := v.Verify(ctx(t), reg.host+"/bundled:v1")
		mustRejected(t, r, err, "registry unavailable")
		if !IsTransient(err) {
			t.Errorf("want transient, got %v", err)
		}
	})
}

func TestOneBadImageRefusesTheStack(t *testing.T) {
	reg := newRegistry(t, true)
	k := newKey(t)
	var refs []string
	for i := 0; i < 5; i++ {
		repo := fmt.Sprintf("svc%d", i)
		d := reg.pushImage(t, repo, "v1")
		if i != 3 {
			signLegacy(t, k, d)
		}
		refs = append(refs, reg.host+"/"+repo+":v1")
	}
	v := newVerifier(keyPolicy(t, reg.host, Enforce, k), nil)
	results, err := v.VerifyAll(ctx(t), refs)
	if fault.KindOf(err) != fault.Refused {
		t.Fatalf("want Refused, got %v", err)
	}
	if len(results) != 5 {
		t.Fatalf("%d results", len(results))
	}
	for i, r := range results {
		want := Verified
		if i == 3 {
			want = Rejected
		}
		if r.Status != want || r.Ref != refs[i] {
			t.Errorf("result %d: %s %s (%s)", i, r.Ref, r.Status, r.Reason)
		}
	}
	if !strings.Contains(err.Error(), "svc3") || strings.Contains(err.Error(), "svc1") {
		t.Errorf("error should name only the bad image: %v", err)
	}
	if len(PinnedRefs(results)) != 4 {
		t.Errorf("pinned %v", PinnedRefs(results))
	}
}

func TestCacheByPolicyRevisionAndTTL(t *testing.T) {
	reg := newRegistry(t, true)
	k1, k2 := newKey(t), newKey(t)
	d := reg.pushImage(t, "app", "v1")
	signLegacy(t, k1, d)
	clock := newClock()
	p1 := keyPolicy(t, reg.host, Enforce, k1)
	v := New(p1, Options{Retry: fastRetry(), Now: clock.Now, CacheTTL: time.Minute})
	ref := reg.host + "/app@" + d.DigestStr()

	r, err := v.Verify(ctx(t), ref)
	mustVerified(t, r, err)
	if r.Cached {
		t.Error("first result cached")
	}
	before := reg.requests.Load()
	r, err = v.Verify(ctx(t), ref)
	mustVerified(t, r, err)
	if !r.Cached || reg.requests.Load() != before {
		t.Errorf("second result cached=%v, %d registry requests", r.Cached, reg.requests.Load()-before)
	}
	clock.Add(2 * time.Minute)
	r, err = v.Verify(ctx(t), ref)
	mustVerified(t, r, err)
	if r.Cached {
		t.Error("expired entry served")
	}

	// A policy that trusts only k2 has another revision (the cache key), and verifying under it fails.
	p2 := keyPolicy(t, reg.host, Enforce, k2)
	if p1.Revision() == p2.Revision() {
		t.Fatal("revisions equal")
	}
	r, err = newVerifier(p2, nil).Verify(ctx(t), ref)
	mustRejected(t, r, err, "no signature verified")
	// and back: the same content gives the same revision
	p1again := keyPolicy(t, reg.host, Enforce, k1)
	if p1again.Revision() != p1.Revision() {
		t.Error("revision not deterministic")
	}
}

func TestPolicyModes(t *testing.T) {
	reg := newRegistry(t, true)
	k := newKey(t)
	reg.pushImage(t, "team/app", "v1")
	t.Run("warn mode lets an unsigned image through, pinned", func(t *testing.T) {
		v := newVerifier(keyPolicy(t, reg.host, Warn, k), nil)
		r, err := v.Verify(ctx(t), reg.host+"/team/app:v1")
		if err != nil || r.Status != Warned || r.Pinned == "" || !strings.Contains(r.Reason, "unsigned") {
			t.Fatalf("%+v %v", r, err)
		}
	})
	t.Run("unmatched is rejected by default", func(t *testing.T) {
		tr, err := TrustPolicy{Rules: []Rule{{Pattern: "registry.example/*", Authorities: []Authority{{Key: k.pem}}}}}.Compile()
		if err != nil {
			t.Fatal(err)
		}
		r, err := newVerifier(tr, nil).Verify(ctx(t), reg.host+"/team/app:v1")
		mustRejected(t, r, err, "no trust rule")
	})
	t.Run("allow_unmatched", func(t *testing.T) {
		tr, err := TrustPolicy{AllowUnmatched: true}.Compile()
		if err != nil {
			t.Fatal(err)
		}
		r, err := newVerifier(tr, nil).Verify(ctx(t), reg.host+"/team/app:v1")
		if err != nil || r.Status != Warned || r.Pinned == "" {
			t.Fatalf("%+v %v", r, err)
		}
	})
	t.Run("missing image", func(t *testing.T) {
		r, err := newVerifier(keyPolicy(t, reg.host, Enforce, k), nil).Verify(ctx(t), reg.host+"/nope:v1")
		mustRejected(t, r, err, "not found")
	})
	t.Run("invalid reference", func(t *testing.T) {
		r, err := newVerifier(keyPolicy(t, reg.host, Enforce, k), nil).Verify(ctx(t), "UPPER/case:tag")
		mustRejected(t, r, err, "invalid")
	})
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		pattern, repo string
		want          bool
	}{
		{"registry.gitlab.com/group/*", "registry.gitlab.com/group/app", true},
		{"registry.gitlab.com/group/*", "registry.gitlab.com/group/sub/app", false},
		{"registry.gitlab.com/group/**", "registry.gitlab.com/group/sub/app", true},
		{"registry.gitlab.com/group/*", "registry.gitlab.com/groupx/app", false},
		{"docker.io/library/*", "index.docker.io/library/nginx", true},
		{"127.0.0.1:5000/app", "127.0.0.1:5000/app", true},
		{"127.0.0.1:5000/ap?", "127.0.0.1:5000/app", true},
	} {
		tr, err := TrustPolicy{Rules: []Rule{{Pattern: tc.pattern, Authorities: []Authority{{Key: newKey(t).pem}}}}}.Compile()
		if err != nil {
			t.Fatal(err)
		}
		if got := tr.match(tc.repo) != nil; got != tc.want {
			t.Errorf("%s ~ %s: %v", tc.pattern, tc.repo, got)
		}
	}
}

func TestPolicyCompileErrors(t *testing.T) {
	k := newKey(t)
	for name, p := range map[string]TrustPolicy{
		"no rules":         {},
		"bad mode":         {Rules: []Rule{{Pattern: "a/*", Mode: "audit", Authorities: []Authority{{Key: k.pem}}}}},
		"no authority":     {Rules: []Rule{{Pattern: "a/*"}}},
		"bad key":          {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Key: "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----"}}}}},
		"missing key file": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Key: "/nonexistent/cosign.pub"}}}}},
		"unanchored subject regexp": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Keyless: &Keyless{
			Issuer: "https://gitlab.com", SubjectRegexp: "https://gitlab.com/group/.*", TrustedRoot: "x"}}}}}},
		"half-anchored subject regexp": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Keyless: &Keyless{
			Issuer: "https://gitlab.com", SubjectRegexp: "^https://gitlab.com/group/.*", TrustedRoot: "x"}}}}}},
		"keyless without issuer": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Keyless: &Keyless{
			Subject: "s", TrustedRoot: "x"}}}}}},
		"keyless without trusted root": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Keyless: &Keyless{
			Issuer: "https://gitlab.com", Subject: "s"}}}}}},
		"keyless bad evidence": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Keyless: &Keyless{
			Issuer: "https://gitlab.com", Subject: "s", TrustedRoot: "x", Evidence: "none"}}}}}},
		"key and keyless": {Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Key: k.pem, Keyless: &Keyless{}}}}}},
	} {
		if _, err := p.Compile(); err == nil || fault.KindOf(err) != fault.Invalid {
			t.Errorf("%s: want an Invalid error, got %v", name, err)
		}
	}
}

func TestKeyFromFileAndRevision(t *testing.T) {
	k := newKey(t)
	path := t.TempDir() + "/cosign.pub"
	writeFile(t, path, k.pem)
	a, err := TrustPolicy{Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Key: path}}}}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	b, err := TrustPolicy{Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Key: k.pem}}}}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if a.Revision() != b.Revision() {
		t.Error("same key inline and from a file should give the same revision")
	}
	writeFile(t, path, newKey(t).pem)
	c, err := TrustPolicy{Rules: []Rule{{Pattern: "a/*", Authorities: []Authority{{Key: path}}}}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if c.Revision() == a.Revision() {
		t.Error("a changed key file must change the revision")
	}
}

var _ = name.Insecure
