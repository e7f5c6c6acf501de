package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ociremote "github.com/sigstore/cosign/v3/pkg/oci/remote"
	cstatic "github.com/sigstore/cosign/v3/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v3/pkg/types"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
)

// testRegistry is an in-process registry on 127.0.0.1 (plain HTTP) with an optional fault injector.
type testRegistry struct {
	host     string
	requests atomic.Int64
	// inject, when set, may answer a request instead of the registry (return true when it did).
	inject atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

func newRegistry(t *testing.T, referrers bool) *testRegistry {
	t.Helper()
	tr := &testRegistry{}
	reg := registry.New(registry.WithReferrersSupport(referrers), registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.requests.Add(1)
		if f := tr.inject.Load(); f != nil && (*f)(w, r) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tr.host = strings.TrimPrefix(srv.URL, "http://")
	return tr
}

func (tr *testRegistry) setInject(f func(w http.ResponseWriter, r *http.Request) bool) {
	if f == nil {
		tr.inject.Store(nil)
		return
	}
	tr.inject.Store(&f)
}

// pushImage pushes a random image to repo:tag and returns its digest reference.
func (tr *testRegistry) pushImage(t *testing.T, repo, tag string) name.Digest {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(tr.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref.Context().Digest(h.String())
}

type testKey struct {
	sv  *signature.ECDSASignerVerifier
	pem string
}

func newKey(t *testing.T) testKey {
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
	return testKey{sv: sv, pem: string(pub)}
}

// keyPolicy trusts the keys for every repository of the host.
func keyPolicy(t *testing.T, host string, mode Mode, keys ...testKey) *Trust {
	t.Helper()
	var auths []Authority
	for _, k := range keys {
		auths = append(auths, Authority{Key: k.pem})
	}
	tr, err := TrustPolicy{Rules: []Rule{{Pattern: host + "/**", Mode: mode, Authorities: auths}}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

type sigLayer struct {
	payload     []byte
	mediaType   types.MediaType
	annotations map[string]string
}

// pushSigImage writes an image of signature layers to the digest's tag with the given suffix (".sig").
func pushSigImage(t *testing.T, d name.Digest, suffix string, layers ...sigLayer) {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l.payload, l.mediaType), Annotations: l.annotations})
		if err != nil {
			t.Fatal(err)
		}
	}
	tag := d.Context().Tag(strings.Replace(d.DigestStr(), ":", "-", 1) + suffix)
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

// legacyLayer is a cosign simple-signing signature by k over a payload naming claimed.
func legacyLayer(t *testing.T, k testKey, claimed name.Digest) sigLayer {
	t.Helper()
	p, err := (&payload.Cosign{Image: claimed}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return signedLayer(t, k, p)
}

func signedLayer(t *testing.T, k testKey, p []byte) sigLayer {
	t.Helper()
	sig, err := k.sv.SignMessage(bytes.NewReader(p))
	if err != nil {
		t.Fatal(err)
	}
	return sigLayer{payload: p, mediaType: "application/vnd.dev.cosign.simplesigning.v1+json",
		annotations: map[string]string{cstatic.SignatureAnnotationKey: base64.StdEncoding.EncodeToString(sig)}}
}

// signLegacy signs the digest with k in the legacy .sig format.
func signLegacy(t *testing.T, k testKey, d name.Digest) {
	t.Helper()
	pushSigImage(t, d, ".sig", legacyLayer(t, k, d))
}

// keypair adapts a test key to sigstore-go's signer.
type keypair struct {
	*sign.EphemeralKeypair
}

func newBundleKey(t *testing.T) (*sign.EphemeralKeypair, string) {
	t.Helper()
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	pemStr, err := kp.GetPublicKeyPem()
	if err != nil {
		t.Fatal(err)
	}
	return kp, pemStr
}

func statement(t *testing.T, subject name.Digest, predicateType string) []byte {
	t.Helper()
	alg, hx, _ := strings.Cut(subject.DigestStr(), ":")
	b, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": subject.Context().Name(), "digest": map[string]string{alg: hx}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signBundle attaches a cosign v3 bundle (DSSE in-toto statement) to d as an OCI referrer, the way
// `cosign sign --new-bundle-format` does.
func signBundle(t *testing.T, kp sign.Keypair, d name.Digest, predicateType string, opts sign.BundleOptions) {
	t.Helper()
	b := bundleBytes(t, kp, statement(t, d, predicateType), opts)
	if err := ociremote.WriteAttestationNewBundleFormat(d, b, predicateType); err != nil {
		t.Fatal(err)
	}
}

func bundleBytes(t *testing.T, kp sign.Keypair, stmt []byte, opts sign.BundleOptions) []byte {
	t.Helper()
	pb, err := sign.Bundle(&sign.DSSEData{Data: stmt, PayloadType: "application/vnd.in-toto+json"}, kp, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var _ = ctypes.CosignSignPredicateType

// fakeClock is an injectable clock.
type fakeClock struct{ now atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.now.Store(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time      { return time.Unix(0, c.now.Load()) }
func (c *fakeClock) Add(d time.Duration) { c.now.Add(int64(d)) }
func ctx(t *testing.T) context.Context   { return t.Context() }
func hexOf(d v1.Hash) string             { return hex.EncodeToString([]byte(d.Hex)) }
func fastRetry() *remote.Backoff         { return &remote.Backoff{Duration: time.Millisecond, Steps: 1} }

func writeRawBundle(d name.Digest, raw []byte) error {
	return ociremote.WriteAttestationNewBundleFormat(d, raw, ctypes.CosignSignPredicateType)
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
