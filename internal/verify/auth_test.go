package verify

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

func TestRegistryCredentials(t *testing.T) {
	reg := newRegistry(t, true)
	k := newKey(t)
	d := reg.pushImage(t, "private/app", "v1")
	signLegacy(t, k, d)
	reg.setInject(func(w http.ResponseWriter, r *http.Request) bool {
		if u, p, ok := r.BasicAuth(); ok && u == "agent" && p == "s3cret" {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	trust := keyPolicy(t, reg.host, Enforce, k)
	ref := reg.host + "/private/app:v1"

	r, err := New(trust, Options{Retry: fastRetry(), Keychain: authn.NewMultiKeychain()}).Verify(ctx(t), ref)
	mustRejected(t, r, err, "resolving tag")
	if IsTransient(err) {
		t.Error("401 is not transient")
	}
	r, err = New(trust, Options{Retry: fastRetry(), Keychain: authn.NewMultiKeychain(),
		Auth: map[string]authn.AuthConfig{reg.host: {Username: "agent", Password: "s3cret"}}}).Verify(ctx(t), ref)
	mustVerified(t, r, err)
}

func TestLoopbackOnlyIsInsecure(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:5000": true, "127.3.2.1": true, "localhost:5000": true, "localhost": true, "[::1]:5000": true,
		"10.0.0.1:5000": false, "registry.gitlab.com": false, "192.168.1.2:5000": false, "localhost.evil.com": false,
	} {
		if got := isLoopback(host); got != want {
			t.Errorf("%s: %v", host, got)
		}
	}
	_, base, err := parseRef("127.0.0.1:5000/app")
	if err != nil || base != "127.0.0.1:5000/app:latest" {
		t.Errorf("%s %v", base, err)
	}
	_, base, err = parseRef("127.0.0.1:5000/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	if err != nil || base != "127.0.0.1:5000/app" {
		t.Errorf("%s %v", base, err)
	}
}
