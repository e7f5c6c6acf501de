package verify

import (
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/sabeiro/sawmill/internal/fault"
)

// Mode says what a failed verification of a matching image means.
type Mode string

const (
	// Enforce rejects the image (and so the stack) when no authority verifies it. The default.
	Enforce Mode = "enforce"
	// Warn reports the failure but lets the image through, still pinned to its digest.
	Warn Mode = "warn"
)

// Evidence a keyless signature must carry to prove when it was made (the certificate is short-lived).
const (
	// EvidenceTlog requires a Rekor transparency-log entry in the signature bundle. The default.
	EvidenceTlog = "tlog"
	// EvidenceTimestamp requires an RFC 3161 signed timestamp.
	EvidenceTimestamp = "timestamp"
)

// TrustPolicy is the trust policy: which signers an image must be signed by. It is plain configuration
// (viper can unmarshal it); Compile checks it and loads keys and trusted roots.
type TrustPolicy struct {
	// Rules are tried in order; the first whose pattern matches the image repository decides.
	Rules []Rule `yaml:"rules" json:"rules" mapstructure:"rules"`
	// AllowUnmatched lets an image that matches no rule through unverified (still pinned). Default false:
	// such an image is rejected.
	AllowUnmatched bool `yaml:"allow_unmatched" json:"allow_unmatched" mapstructure:"allow_unmatched"`
}

// Rule maps repositories to authorities.
type Rule struct {
	// Pattern is a glob on the image repository as `registry/path`, e.g. `registry.gitlab.com/group/*`:
	// `*` and `?` do not cross `/`, `**` does. Docker Hub images match as `index.docker.io/library/x`
	// and as `docker.io/library/x`.
	Pattern string `yaml:"pattern" json:"pattern" mapstructure:"pattern"`
	// Mode is enforce (default) or warn.
	Mode Mode `yaml:"mode" json:"mode" mapstructure:"mode"`
	// Authorities: a signature verified by any one of them is enough.
	Authorities []Authority `yaml:"authorities" json:"authorities" mapstructure:"authorities"`
}

// Authority is a public key or a keyless identity; exactly one of Key and Keyless is set.
type Authority struct {
	// Name labels the signer in results; defaults to the key's fingerprint or the keyless identity.
	Name string `yaml:"name" json:"name,omitempty" mapstructure:"name"`
	// Key is a PEM public key, inline or the path of a file holding it.
	Key string `yaml:"key" json:"key,omitempty" mapstructure:"key"`
	// Keyless is a Fulcio certificate identity.
	Keyless *Keyless `yaml:"keyless" json:"keyless,omitempty" mapstructure:"keyless"`
}

// Keyless is a keyless (Fulcio certificate) identity. Subject and SubjectRegexp are exclusive; a regexp
// must be anchored (^...$).
type Keyless struct {
	Issuer        string `yaml:"issuer" json:"issuer" mapstructure:"issuer"`
	Subject       string `yaml:"subject" json:"subject,omitempty" mapstructure:"subject"`
	SubjectRegexp string `yaml:"subject_regexp" json:"subject_regexp,omitempty" mapstructure:"subject_regexp"`
	// TrustedRoot is the path of a Sigstore trusted_root.json (Fulcio CAs, Rekor keys, TSAs, CT logs).
	// It is required: the agent never fetches trust material over the network.
	TrustedRoot string `yaml:"trusted_root" json:"trusted_root" mapstructure:"trusted_root"`
	// Evidence is "tlog" (default: a Rekor entry in the bundle) or "timestamp" (an RFC 3161 timestamp).
	Evidence string `yaml:"evidence" json:"evidence,omitempty" mapstructure:"evidence"`
	// IgnoreSCT skips the certificate-transparency check of the certificate (private Fulcio without CT).
	IgnoreSCT bool `yaml:"ignore_sct" json:"ignore_sct,omitempty" mapstructure:"ignore_sct"`
}

// Trust is a compiled TrustPolicy: keys parsed, trusted roots loaded, patterns and regexps compiled.
type Trust struct {
	rules          []compiledRule
	allowUnmatched bool
	revision       string
}

type compiledRule struct {
	pattern     string
	re          *regexp.Regexp
	mode        Mode
	authorities []compiledAuthority
}

type compiledAuthority struct {
	name     string
	named    bool               // Name was given in the policy
	verifier signature.Verifier // key-based
	keyless  *compiledKeyless
}

type compiledKeyless struct {
	issuer, subject, subjectRegexp string
	trusted                        root.TrustedMaterial
	evidence                       string
	ignoreSCT                      bool
}

// Revision identifies the policy's content, including the bytes of key files and trusted roots, so a
// changed key file changes the revision. It is part of the cache key.
func (t *Trust) Revision() string { return t.revision }

// Compile checks the policy and loads its keys and trusted roots. Errors are fault.Invalid.
func (p TrustPolicy) Compile() (*Trust, error) {
	t, err := p.compile()
	if err != nil {
		return nil, fault.InvalidErr(fmt.Errorf("trust policy: %w", err))
	}
	return t, nil
}

// revision document: the policy with every file reference replaced by its content's hash.
type revRule struct {
	Pattern     string   `json:"p"`
	Mode        Mode     `json:"m"`
	Authorities []revAut `json:"a"`
}

type revAut struct {
	Name    string   `json:"n"`
	Key     string   `json:"k,omitempty"`
	Keyless *Keyless `json:"kl,omitempty"`
	Root    string   `json:"r,omitempty"`
}

func (p TrustPolicy) compile() (*Trust, error) {
	t := &Trust{allowUnmatched: p.AllowUnmatched}
	var rev struct {
		Rules          []revRule `json:"rules"`
		AllowUnmatched bool      `json:"allow_unmatched"`
	}
	rev.AllowUnmatched = p.AllowUnmatched
	if len(p.Rules) == 0 && !p.AllowUnmatched {
		return nil, errors.New("no rules (every image would be rejected)")
	}
	for i, r := range p.Rules {
		re, err := globRegexp(r.Pattern)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i, err)
		}
		mode := r.Mode
		if mode == "" {
			mode = Enforce
		}
		if mode != Enforce && mode != Warn {
			return nil, fmt.Errorf("rule %d (%s): mode %q is neither enforce nor warn", i, r.Pattern, r.Mode)
		}
		if len(r.Authorities) == 0 {
			return nil, fmt.Errorf("rule %d (%s): no authorities", i, r.Pattern)
		}
		cr := compiledRule{pattern: r.Pattern, re: re, mode: mode}
		rr := revRule{Pattern: r.Pattern, Mode: mode}
		for j, a := range r.Authorities {
			ca, ra, err := compileAuthority(a)
			if err != nil {
				return nil, fmt.Errorf("rule %d (%s) authority %d: %w", i, r.Pattern, j, err)
			}
			cr.authorities = append(cr.authorities, ca)
			rr.Authorities = append(rr.Authorities, ra)
		}
		t.rules = append(t.rules, cr)
		rev.Rules = append(rev.Rules, rr)
	}
	b, err := json.Marshal(rev)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	t.revision = "sha256:" + hex.EncodeToString(sum[:])
	return t, nil
}

func compileAuthority(a Authority) (compiledAuthority, revAut, error) {
	switch {
	case a.Key != "" && a.Keyless != nil:
		return compiledAuthority{}, revAut{}, errors.New("both key and keyless set")
	case a.Key != "":
		pemBytes := []byte(a.Key)
		if !strings.Contains(a.Key, "-----BEGIN") {
			b, err := os.ReadFile(a.Key)
			if err != nil {
				return compiledAuthority{}, revAut{}, fmt.Errorf("reading key: %w", err)
			}
			pemBytes = b
		}
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
		if err != nil {
			return compiledAuthority{}, revAut{}, fmt.Errorf("parsing public key: %w", err)
		}
		v, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return compiledAuthority{}, revAut{}, fmt.Errorf("loading public key: %w", err)
		}
		der, err := cryptoutils.MarshalPublicKeyToDER(pub)
		if err != nil {
			return compiledAuthority{}, revAut{}, err
		}
		fp := sha256.Sum256(der)
		name := a.Name
		if name == "" {
			name = "key:sha256:" + hex.EncodeToString(fp[:])[:16]
		}
		return compiledAuthority{name: name, verifier: v},
			revAut{Name: name, Key: hex.EncodeToString(fp[:])}, nil
	case a.Keyless != nil:
		k := *a.Keyless
		if k.Issuer == "" {
			return compiledAuthority{}, revAut{}, errors.New("keyless: issuer is required")
		}
		if (k.Subject == "") == (k.SubjectRegexp == "") {
			return compiledAuthority{}, revAut{}, errors.New("keyless: exactly one of subject and subject_regexp is required")
		}
		if k.SubjectRegexp != "" {
			if !strings.HasPrefix(k.SubjectRegexp, "^") || !strings.HasSuffix(k.SubjectRegexp, "$") {
				return compiledAuthority{}, revAut{}, fmt.Errorf("keyless: subject_regexp %q is not anchored (^...$)", k.SubjectRegexp)
			}
			if _, err := regexp.Compile(k.SubjectRegexp); err != nil {
				return compiledAuthority{}, revAut{}, fmt.Errorf("keyless: subject_regexp: %w", err)
			}
		}
		switch k.Evidence {
		case "":
			k.Evidence = EvidenceTlog
		case EvidenceTlog, EvidenceTimestamp:
		default:
			return compiledAuthority{}, revAut{}, fmt.Errorf("keyless: evidence %q is neither %s nor %s", k.Evidence, EvidenceTlog, EvidenceTimestamp)
		}
		if k.TrustedRoot == "" {
			return compiledAuthority{}, revAut{}, errors.New("keyless: trusted_root is required")
		}
		rootJSON, err := os.ReadFile(k.TrustedRoot)
		if err != nil {
			return compiledAuthority{}, revAut{}, fmt.Errorf("keyless: reading trusted root: %w", err)
		}
		tr, err := root.NewTrustedRootFromJSON(rootJSON)
		if err != nil {
			return compiledAuthority{}, revAut{}, fmt.Errorf("keyless: parsing trusted root: %w", err)
		}
		rs := sha256.Sum256(rootJSON)
		name := a.Name
		if name == "" {
			s := k.Subject
			if s == "" {
				s = k.SubjectRegexp
			}
			name = "keyless:" + k.Issuer + " " + s
		}
		ck := &compiledKeyless{issuer: k.Issuer, subject: k.Subject, subjectRegexp: k.SubjectRegexp,
			trusted: tr, evidence: k.Evidence, ignoreSCT: k.IgnoreSCT}
		return compiledAuthority{name: name, named: a.Name != "", keyless: ck},
			revAut{Name: name, Keyless: &k, Root: hex.EncodeToString(rs[:])}, nil
	}
	return compiledAuthority{}, revAut{}, errors.New("neither key nor keyless set")
}

// globRegexp compiles a repository glob: `**` matches anything, `*` and `?` stay within a path segment.
func globRegexp(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, errors.New("empty pattern")
	}
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		switch {
		case c == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// match returns the first rule matching the repository (`registry/path`), or nil.
func (t *Trust) match(repo string) *compiledRule {
	names := []string{repo}
	if rest, ok := strings.CutPrefix(repo, "index.docker.io/"); ok {
		names = append(names, "docker.io/"+rest)
	}
	for i := range t.rules {
		for _, n := range names {
			if t.rules[i].re.MatchString(n) {
				return &t.rules[i]
			}
		}
	}
	return nil
}
