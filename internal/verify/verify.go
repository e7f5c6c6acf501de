package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"github.com/sabeiro/sawmill/internal/fault"
)

// Status of one image.
type Status string

const (
	// Verified: an authority of the matching rule verified a signature on the digest.
	Verified Status = "verified"
	// Warned: the image failed verification (or matched no rule while unmatched images are allowed) under a
	// warn-mode rule; it may be deployed, pinned to its digest.
	Warned Status = "warned"
	// Rejected: the image must not be deployed.
	Rejected Status = "rejected"
)

// Signature formats.
const (
	FormatLegacy = "legacy" // sha256-<hex>.sig tag, simple-signing payload
	FormatBundle = "bundle" // cosign v3 Sigstore bundle attached as an OCI referrer
)

// Result is the outcome for one image reference.
type Result struct {
	// Ref is the reference as written in the stack.
	Ref string `json:"ref"`
	// Digest is the manifest digest that was verified (sha256:...), empty when it could not be resolved.
	Digest string `json:"digest,omitempty"`
	// Pinned is the reference to deploy: the written repository and tag plus @Digest.
	Pinned string `json:"pinned,omitempty"`
	// Signers names who signed it (authority name, and for keyless the certificate's issuer and subject).
	Signers []string `json:"signers,omitempty"`
	// Format is the signature format that verified (legacy or bundle).
	Format string `json:"format,omitempty"`
	// Rule is the policy pattern that matched.
	Rule   string `json:"rule,omitempty"`
	Status Status `json:"status"`
	// Reason says why the image was warned about or rejected.
	Reason string `json:"reason,omitempty"`
	// Cached is true when the verification came from the cache.
	Cached bool `json:"cached,omitempty"`
	// Err is the per-image error (a *Rejection) when Status is not Verified.
	Err error `json:"-"`
}

// Options configure a Verifier; zero values get defaults.
type Options struct {
	// Keychain resolves registry credentials; default authn.DefaultKeychain (the Docker config file).
	Keychain authn.Keychain
	// Auth holds explicit credentials per registry host (e.g. "registry.gitlab.com"), tried before Keychain.
	Auth map[string]authn.AuthConfig
	// Transport is the HTTP transport to registries; default remote.DefaultTransport.
	Transport http.RoundTripper
	// Retry is the backoff for retrying registry 5xx/429/network errors within one verification;
	// default 3 tries starting at 100ms.
	Retry *remote.Backoff
	// Timeout bounds the verification of one image; default 30s.
	Timeout time.Duration
	// Concurrency bounds the images verified at once; default 8.
	Concurrency int
	// CacheTTL is how long a verified result is reused; default 10m, negative disables the cache.
	CacheTTL time.Duration
	// Now is the clock for the cache; default time.Now.
	Now func() time.Time
	// MaxBytes caps every registry response and signature artifact; default 1 MiB.
	MaxBytes int64
	// MaxSignatures caps the signatures (legacy layers or bundle referrers) looked at per image; more is
	// rejected as oversized. Default 32 (every `cosign sign` run appends a legacy signature layer).
	MaxSignatures int
	// Logger; default discards.
	Logger *slog.Logger
}

// Verifier verifies image references against a trust policy. It is safe for concurrent use.
type Verifier struct {
	opts     Options
	keychain authn.Keychain
	// puller keeps one authenticated transport per repository across verifications (no ping and token
	// exchange per request); fetchers that failed to set up are not kept.
	puller *remote.Puller
	mu     sync.Mutex
	trust  *Trust
	cache  map[cacheKey]cacheEntry
}

type cacheKey struct{ revision, repo, digest string }

type cacheEntry struct {
	res     Result
	expires time.Time
}

// New returns a Verifier for the compiled trust policy.
func New(trust *Trust, opts Options) *Verifier {
	if opts.Keychain == nil {
		opts.Keychain = authn.DefaultKeychain
	}
	if opts.Transport == nil {
		opts.Transport = remote.DefaultTransport
	}
	if opts.Retry == nil {
		opts.Retry = &remote.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.CacheTTL == 0 {
		opts.CacheTTL = 10 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 1 << 20
	}
	if opts.MaxSignatures <= 0 {
		opts.MaxSignatures = 32
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	kc := opts.Keychain
	if len(opts.Auth) > 0 {
		kc = authn.NewMultiKeychain(staticKeychain(opts.Auth), kc)
	}
	v := &Verifier{opts: opts, keychain: kc, trust: trust, cache: map[cacheKey]cacheEntry{}}
	p, err := remote.NewPuller(v.baseOptions()...)
	if err == nil { // NewPuller fails only on invalid options; without it every call sets up its own transport
		v.puller = p
	}
	return v
}

// Trust returns the current trust policy.
func (v *Verifier) Trust() *Trust {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.trust
}

// Verify verifies one image reference. The error is nil unless the image is rejected; then it is a
// fault.Refused error wrapping a *Rejection (which may wrap a *TransientError).
func (v *Verifier) Verify(ctx context.Context, ref string) (Result, error) {
	r := v.verify(ctx, ref)
	if r.Status == Rejected {
		return r, fault.RefusedErr(r.Err)
	}
	return r, nil
}

// VerifyAll verifies every reference (duplicates once), concurrently and bounded, and returns one Result
// per reference in order. If any image is rejected, the error is fault.Refused and joins every
// *Rejection: one bad image refuses the whole stack.
func (v *Verifier) VerifyAll(ctx context.Context, refs []string) ([]Result, error) {
	uniq := map[string]*Result{}
	var order []string
	for _, r := range refs {
		if _, ok := uniq[r]; !ok {
			uniq[r] = &Result{}
			order = append(order, r)
		}
	}
	var g errgroup.Group
	g.SetLimit(v.opts.Concurrency)
	for _, r := range order {
		out := uniq[r]
		g.Go(func() error {
			*out = v.verify(ctx, r)
			return nil
		})
	}
	_ = g.Wait()
	results := make([]Result, len(refs))
	var errs []error
	for i, r := range refs {
		results[i] = *uniq[r]
	}
	for _, r := range order {
		if res := uniq[r]; res.Status == Rejected {
			errs = append(errs, res.Err)
		}
	}
	if len(errs) > 0 {
		return results, fault.RefusedErr(fmt.Errorf("image verification refused %d of %d images: %w",
			len(errs), len(order), errors.Join(errs...)))
	}
	return results, nil
}

// PinnedRefs maps each verified or warned reference to the pinned reference to deploy. Rejected images
// are absent: a caller that finds a service image missing must not deploy it.
func PinnedRefs(results []Result) map[string]string {
	m := map[string]string{}
	for _, r := range results {
		if r.Status != Rejected && r.Pinned != "" {
			m[r.Ref] = r.Pinned
		}
	}
	return m
}

func (v *Verifier) verify(ctx context.Context, raw string) Result {
	res := Result{Ref: raw}
	reject := func(reason string, err error) Result {
		res.Status = Rejected
		res.Reason = reason
		if err != nil {
			res.Reason = reason + ": " + err.Error()
		}
		res.Err = &Rejection{Ref: raw, Reason: reason, Err: err}
		v.opts.Logger.Debug("image rejected", "ref", raw, "reason", res.Reason)
		return res
	}
	trust := v.Trust()
	if trust == nil {
		return reject("no trust policy", nil)
	}
	ref, base, err := parseRef(raw)
	if err != nil {
		return reject("invalid image reference", err)
	}
	repo := ref.Context()
	repoName := repo.Name()
	rule := trust.match(repoName)
	if rule != nil {
		res.Rule = rule.pattern
	}

	ctx, cancel := context.WithTimeout(ctx, v.opts.Timeout)
	defer cancel()
	ropts := v.remoteOptions(ctx)

	digest := ""
	if d, ok := ref.(name.Digest); ok {
		digest = d.DigestStr()
	} else {
		desc, err := remote.Head(ref, ropts...)
		if err != nil {
			err = classify(err)
			if isNotFound(err) {
				return reject("image not found", err)
			}
			return reject("resolving tag", err)
		}
		digest = desc.Digest.String()
	}
	res.Digest = digest
	res.Pinned = base + "@" + digest

	if rule == nil {
		if trust.allowUnmatched {
			res.Status = Warned
			res.Reason = "no trust rule matches the repository; allowed unverified (allow_unmatched)"
			res.Err = &Rejection{Ref: raw, Reason: res.Reason}
			return res
		}
		return reject("no trust rule matches repository "+repoName, nil)
	}

	key := cacheKey{trust.revision, repoName, digest}
	if c, ok := v.cached(key); ok {
		c.Ref, c.Pinned, c.Cached = raw, res.Pinned, true
		return c
	}

	dref := repo.Digest(digest)
	signers, format, verr := v.verifySignatures(ctx, dref, rule, ropts)
	if verr != nil {
		var rj *Rejection
		reason, cause := "verification failed", verr
		if errors.As(verr, &rj) {
			reason, cause = rj.Reason, rj.Err
		}
		if rule.mode == Warn {
			res.Status = Warned
			res.Reason = reason
			if cause != nil {
				res.Reason += ": " + cause.Error()
			}
			res.Err = &Rejection{Ref: raw, Reason: reason, Err: cause}
			return res
		}
		return reject(reason, cause)
	}
	res.Status = Verified
	res.Signers = signers
	res.Format = format
	v.store(key, res)
	return res
}

func (v *Verifier) cached(k cacheKey) (Result, bool) {
	if v.opts.CacheTTL < 0 {
		return Result{}, false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.cache[k]
	if !ok {
		return Result{}, false
	}
	if !v.opts.Now().Before(e.expires) {
		delete(v.cache, k)
		return Result{}, false
	}
	return e.res, true
}

func (v *Verifier) store(k cacheKey, r Result) {
	if v.opts.CacheTTL < 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.trust == nil || v.trust.revision != k.revision {
		return // the policy changed while verifying
	}
	r.Signers = append([]string(nil), r.Signers...)
	v.cache[k] = cacheEntry{res: r, expires: v.opts.Now().Add(v.opts.CacheTTL)}
}

func (v *Verifier) remoteOptions(ctx context.Context) []remote.Option {
	if v.puller != nil {
		return []remote.Option{remote.WithContext(ctx), remote.Reuse(v.puller)}
	}
	return append(v.baseOptions(), remote.WithContext(ctx))
}

func (v *Verifier) baseOptions() []remote.Option {
	return []remote.Option{
		remote.WithAuthFromKeychain(v.keychain),
		remote.WithTransport(&cappedTransport{next: v.opts.Transport, limit: v.opts.MaxBytes}),
		remote.WithRetryBackoff(*v.opts.Retry),
		remote.WithUserAgent("sawmill-agent"),
	}
}

// parseRef parses an image reference. Plain HTTP is allowed only for loopback registries. base is the
// reference as written without any digest, with an explicit tag when the written one had neither.
func parseRef(raw string) (name.Reference, string, error) {
	ref, err := name.ParseReference(raw)
	if err != nil {
		return nil, "", err
	}
	if isLoopback(ref.Context().RegistryStr()) {
		if ref, err = name.ParseReference(raw, name.Insecure); err != nil {
			return nil, "", err
		}
	}
	base, hasDigest := raw, false
	if i := strings.Index(raw, "@"); i >= 0 {
		base, hasDigest = raw[:i], true
	}
	last := base[strings.LastIndex(base, "/")+1:]
	if !hasDigest && !strings.Contains(last, ":") {
		base += ":" + name.DefaultTag
	}
	return ref, base, nil
}

func isLoopback(registry string) bool {
	host := registry
	if h, _, err := net.SplitHostPort(registry); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

type staticKeychain map[string]authn.AuthConfig

func (s staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if c, ok := s[r.RegistryStr()]; ok {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}
