package release

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// OCI is a Registry backed by go-containerregistry.
type OCI struct {
	Keychain  authn.Keychain    // defaults to authn.DefaultKeychain
	Transport http.RoundTripper // defaults to remote.DefaultTransport
}

func (o OCI) opts(ctx context.Context) []remote.Option {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)}
	if o.Transport != nil {
		opts = append(opts, remote.WithTransport(o.Transport))
	}
	return opts
}

// Digest implements Registry with a HEAD request for the manifest.
func (o OCI) Digest(ctx context.Context, ref string) (string, error) {
	r, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", ref, err)
	}
	desc, err := remote.Head(r, o.opts(ctx)...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return "", fmt.Errorf("%s: %w", ref, ErrNotFound)
		}
		return "", err
	}
	return desc.Digest.String(), nil
}

// Tag implements Registry: it fetches repository@digest and pushes it under tag.
func (o OCI) Tag(ctx context.Context, repository, digest, tag string) error {
	src, err := name.NewDigest(repository+"@"+digest, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("parse %s@%s: %w", repository, digest, err)
	}
	desc, err := remote.Get(src, o.opts(ctx)...)
	if err != nil {
		return fmt.Errorf("get %s: %w", src, err)
	}
	dst, err := name.NewTag(repository+":"+tag, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("parse %s:%s: %w", repository, tag, err)
	}
	return remote.Tag(dst, desc, o.opts(ctx)...)
}

// BasicKeychain answers with a username and password for one registry host and defers to
// Fallback (or anonymous) for every other host. The password is never printed.
type BasicKeychain struct {
	Host, Username, Password string
	Fallback                 authn.Keychain
}

// Resolve implements authn.Keychain.
func (k BasicKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if k.Host != "" && r.RegistryStr() == k.Host && k.Username != "" {
		return &authn.Basic{Username: k.Username, Password: k.Password}, nil
	}
	if k.Fallback != nil {
		return k.Fallback.Resolve(r)
	}
	return authn.Anonymous, nil
}
