// Package policy evaluates rego (v1) policies over a stack's input document and returns the decisions: denies
// that refuse a rollout and warnings that are only reported.
//
// In: a *stack.Stack (the converted Swarm specs and the compose keys Swarm drops), signature results, policy
// directories (the embedded default set from policies/ plus any configured ones). Out: the input document
// (what `agent render` prints) and a Report of decisions, each with kind, rule, service and message.
//
// Rules follow conftest's naming so `conftest test` on the rendered document reaches the same decisions:
// rules in package `main` named `deny`, `deny_<name>`, `violation[_<name>]` (denies) and `warn[_<name>]`
// (warnings), whose values are strings or objects with a `msg` string (and optionally `service` and `rule`);
// an `exception` rule whose values are arrays of rule names (without the deny_/warn_ prefix) turns those rules
// off for the whole document, as conftest does.
//
// The engine compiles strictly, with the built-ins that reach the network (http.send, net.lookup_ip_addr) and
// opa.runtime removed, and prepares the query once per policy revision (a hash of the policy files).
// EvaluateKeyed reuses the report of a stack whose caller-given input key is unchanged under the same
// revision (unless a policy mentions a nondeterministic built-in such as time.now_ns). A policy that does not
// parse or compile is a fault.Invalid error naming the file and line.
//
// Imports OPA, internal/stack, internal/fault and the embedded policies package; nothing else of this project.
package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/policies"
)

// Namespace is the rego package the engine (and conftest, by default) reads decisions from.
const Namespace = "main"

// Decision kinds.
const (
	Deny = "deny"
	Warn = "warn"
)

// DisabledBuiltins are the built-ins a policy may not call: they reach the network or the agent's runtime.
var DisabledBuiltins = []string{"http.send", "net.lookup_ip_addr", "opa.runtime"}

var (
	warnRule = regexp.MustCompile(`^warn(_[a-zA-Z0-9]+)*$`)
	denyRule = regexp.MustCompile(`^(deny|violation)(_[a-zA-Z0-9]+)*$`)
)

// Options say which policies the engine evaluates.
type Options struct {
	// Dirs are extra policy directories (teams' own rules), read recursively for *.rego; *_test.rego files
	// are left out.
	Dirs []string
	// NoDefault leaves out the embedded default set.
	NoDefault bool
}

// Decision is one result of one rule.
type Decision struct {
	Kind    string `json:"kind"`
	Rule    string `json:"rule"`
	Service string `json:"service,omitempty"`
	Message string `json:"message"`
	// Source is the rego rule that made the decision (deny_privileged, say).
	Source string `json:"source"`
}

// Report is the outcome of one evaluation.
type Report struct {
	Stack string `json:"stack"`
	// Revision is the hash of the policy files evaluated.
	Revision string `json:"revision"`
	// Rules are the names of the deny and warn rules evaluated (e.g. deny_privileged).
	Rules []string `json:"rules"`
	// Services are the compose names of the services judged.
	Services  []string   `json:"services"`
	Decisions []Decision `json:"decisions"`
	// Excepted are rules turned off by conftest-style `exception` rules.
	Excepted []string `json:"excepted,omitempty"`
	// Elapsed is the evaluation time (not marshalled: output stays deterministic).
	Elapsed time.Duration `json:"-"`
}

// Denies returns the deny decisions.
func (r *Report) Denies() []Decision { return r.kind(Deny) }

// Warns returns the warn decisions.
func (r *Report) Warns() []Decision { return r.kind(Warn) }

// Count returns how many decisions are of kind k (Deny or Warn).
func (r *Report) Count(k string) int {
	n := 0
	for _, d := range r.Decisions {
		if d.Kind == k {
			n++
		}
	}
	return n
}

func (r *Report) kind(k string) []Decision {
	var out []Decision
	for _, d := range r.Decisions {
		if d.Kind == k {
			out = append(out, d)
		}
	}
	return out
}

// Err returns a fault.Refused error when the report has denies, nil otherwise.
func (r *Report) Err() error {
	d := r.Denies()
	if len(d) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "policy denied stack %s (%d):", r.Stack, len(d))
	for _, x := range d {
		b.WriteString("\n  ")
		b.WriteString(x.String())
	}
	return fault.RefusedErr(errors.New(b.String()))
}

func (d Decision) String() string {
	msg := d.Message
	if d.Service != "" && !strings.HasPrefix(msg, d.Service+":") {
		msg = d.Service + ": " + msg
	}
	return fmt.Sprintf("%s [%s] %s", strings.ToUpper(d.Kind), d.Rule, msg)
}

// Engine evaluates policies. It is safe for concurrent use; it re-reads the policy files on each
// evaluation and prepares them again only when their content changed.
type Engine struct {
	opts Options

	mu       sync.Mutex
	revision string
	query    rego.PreparedEvalQuery
	rules    []string
	except   bool
	prepares int
	// deterministic: no policy mentions a nondeterministic built-in (time.now_ns, rand.intn, ...), so the
	// same input under the same revision always gets the same decisions, and last may answer it.
	deterministic bool
	last          map[string]memoReport // EvaluateKeyed's, by stack
	memoized      int
}

// memoReport is the last report of a stack: its input's key and the revision it was evaluated under.
type memoReport struct {
	revision string
	key      Key
	report   *Report
}

// New returns an engine for the policies o names. Nothing is read until the first evaluation.
func New(o Options) *Engine { return &Engine{opts: o} }

// Memoized returns how many EvaluateKeyed calls were answered with the previous report of the same stack,
// because its key and the policy revision were unchanged (the daemon's no-op cycles).
func (e *Engine) Memoized() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.memoized
}

// Prepares returns how many times the engine compiled and prepared its policies.
func (e *Engine) Prepares() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.prepares
}

type source struct {
	name string
	data []byte
}

// embedded are the embedded policies, read once: they are part of the binary, and the daemon asks for the
// revision twice a cycle.
var embedded = sync.OnceValues(func() ([]source, error) {
	var out []source
	err := fs.WalkDir(policies.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !isPolicy(p) {
			return err
		}
		b, err := fs.ReadFile(policies.FS, p)
		if err != nil {
			return err
		}
		out = append(out, source{name: "policies/" + p, data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("embedded policies: %w", err)
	}
	return out, nil
})

// sources reads the policy files, in a stable order.
func (e *Engine) sources() ([]source, error) {
	var out []source
	if !e.opts.NoDefault {
		def, err := embedded()
		if err != nil {
			return nil, err
		}
		out = append(out, def...)
	}
	for _, dir := range e.opts.Dirs {
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fault.InvalidErr(fmt.Errorf("policy directory: %w", err))
		}
		if !st.IsDir() {
			return nil, fault.InvalidErr(fmt.Errorf("policy directory %s: not a directory", dir))
		}
		var found int
		err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !isPolicy(p) {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			found++
			out = append(out, source{name: p, data: b})
			return nil
		})
		if err != nil {
			return nil, fault.InvalidErr(fmt.Errorf("policy directory %s: %w", dir, err))
		}
		if found == 0 {
			return nil, fault.InvalidErr(fmt.Errorf("policy directory %s: no .rego files", dir))
		}
	}
	return out, nil
}

func isPolicy(p string) bool {
	return strings.HasSuffix(p, ".rego") && !strings.HasSuffix(p, "_test.rego")
}

func revision(src []source) string {
	h := sha256.New()
	for _, s := range src {
		fmt.Fprintf(h, "%s\x00%d\x00", s.name, len(s.data))
		h.Write(s.data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// RegoCapabilities returns what policies may use: this OPA's built-ins less DisabledBuiltins, and no network.
func RegoCapabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	off := map[string]bool{}
	for _, b := range DisabledBuiltins {
		off[b] = true
	}
	var keep []*ast.Builtin
	for _, b := range c.Builtins {
		if !off[b.Name] {
			keep = append(keep, b)
		}
	}
	c.Builtins = keep
	c.AllowNet = []string{}
	return c
}

// Prepare reads the policies and prepares them unless they are the revision already prepared. It returns the
// revision.
func (e *Engine) Prepare(ctx context.Context) (string, error) {
	src, err := e.sources()
	if err != nil {
		return "", err
	}
	rev := revision(src)
	e.mu.Lock()
	defer e.mu.Unlock()
	if rev == e.revision {
		return rev, nil
	}
	opts := []func(*rego.Rego){
		rego.SetRegoVersion(ast.RegoV1),
		rego.Capabilities(RegoCapabilities()),
		rego.Strict(true),
	}
	unsafe := map[string]struct{}{}
	for _, b := range DisabledBuiltins {
		unsafe[b] = struct{}{}
	}
	opts = append(opts, rego.UnsafeBuiltins(unsafe))
	ruleSet := map[string]bool{}
	except := false
	deterministic := true
	for _, s := range src {
		m, err := ast.ParseModuleWithOpts(s.name, string(s.data), ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
		if err != nil {
			return "", fault.InvalidErr(fmt.Errorf("policy %s: %w", s.name, err))
		}
		if m == nil {
			continue // an empty file
		}
		opts = append(opts, rego.ParsedModule(m))
		if deterministic && mentionsNondeterministic(m) {
			deterministic = false
		}
		if strings.TrimPrefix(m.Package.Path.String(), "data.") != Namespace {
			continue
		}
		for _, r := range m.Rules {
			ref := r.Head.Ref()
			if len(ref) != 1 {
				continue
			}
			name := ref[0].Value.(ast.Var).String()
			if warnRule.MatchString(name) || denyRule.MatchString(name) {
				ruleSet[name] = true
			}
			if name == "exception" {
				except = true
			}
		}
	}
	rules := make([]string, 0, len(ruleSet))
	for r := range ruleSet {
		rules = append(rules, r)
	}
	sort.Strings(rules)
	var q []string
	for i, r := range rules {
		q = append(q, fmt.Sprintf("r%d := data.%s.%s", i, Namespace, r))
	}
	if except {
		q = append(q, fmt.Sprintf("exc := data.%s.exception", Namespace))
	}
	if len(q) == 0 {
		q = []string{"true"}
	}
	opts = append(opts, rego.Query(strings.Join(q, "; ")))
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return "", fault.InvalidErr(fmt.Errorf("policy: %w", err))
	}
	e.query, e.rules, e.except, e.revision = pq, rules, except, rev
	e.deterministic, e.last = deterministic, nil
	e.prepares++
	return rev, nil
}

// Key names an input document for EvaluateKeyed: a hash of everything the document is made from.
type Key [sha256.Size]byte

// Evaluate judges the input document.
func (e *Engine) Evaluate(ctx context.Context, in *Input) (*Report, error) {
	rev, err := e.Prepare(ctx)
	if err != nil {
		return nil, err
	}
	return e.evaluate(ctx, rev, in)
}

// EvaluateKeyed judges the document build makes, for stack. key names everything that document is made
// from (the daemon: the loaded release's content, the images' pins and signature results, the input
// options); the zero key names nothing. While stack's last report came from the same key under the same
// policy revision, and no policy mentions a nondeterministic built-in, that report is returned (a copy) and
// build is not called: a no-op cycle neither builds, encodes nor evaluates the document. A key that does not
// cover everything the document depends on would reuse decisions about another document; the caller owns
// that promise.
func (e *Engine) EvaluateKeyed(ctx context.Context, stack string, key Key, build func() *Input) (*Report, error) {
	rev, err := e.Prepare(ctx)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	keyed := key != Key{}
	e.mu.Lock()
	if m, ok := e.last[stack]; ok && keyed && e.deterministic && e.revision == rev && m.revision == rev && m.key == key {
		e.memoized++
		e.mu.Unlock()
		rep := m.report.clone()
		rep.Elapsed = time.Since(start)
		return rep, nil
	}
	e.mu.Unlock()
	rep, err := e.evaluate(ctx, rev, build())
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if keyed && e.deterministic && e.revision == rev {
		if e.last == nil {
			e.last = map[string]memoReport{}
		}
		e.last[stack] = memoReport{revision: rev, key: key, report: rep.clone()}
	}
	e.mu.Unlock()
	return rep, nil
}

// evaluate judges in with the policies of revision rev.
func (e *Engine) evaluate(ctx context.Context, rev string, in *Input) (*Report, error) {
	e.mu.Lock()
	pq, rules, except := e.query, e.rules, e.except
	e.mu.Unlock()

	start := time.Now()
	doc, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("policy input: %w", err)
	}
	value, err := inputValue(doc)
	if err != nil {
		return nil, fmt.Errorf("policy input: %w", err)
	}
	rs, err := pq.Eval(ctx, rego.EvalParsedInput(value))
	if err != nil {
		return nil, fmt.Errorf("policy evaluation: %w", err)
	}
	rep := &Report{Stack: in.Stack, Revision: rev, Rules: append([]string{}, rules...), Services: []string{}, Decisions: []Decision{}}
	for _, s := range in.Services {
		rep.Services = append(rep.Services, s.Key)
	}
	if len(rs) == 0 {
		// A rule that errs out leaves the query undefined; that is not a pass.
		return nil, fmt.Errorf("policy evaluation: no result")
	}
	b := rs[0].Bindings
	excepted := map[string]bool{}
	if except {
		for _, set := range asList(b["exc"]) {
			for _, name := range asList(set) {
				if s, ok := name.(string); ok {
					excepted[s] = true
				}
			}
		}
	}
	for i, r := range rules {
		short := shortName(r)
		if except && excepted[short] {
			if len(asList(b[fmt.Sprintf("r%d", i)])) > 0 {
				rep.Excepted = append(rep.Excepted, r)
			}
			continue
		}
		kind := Warn
		if denyRule.MatchString(r) {
			kind = Deny
		}
		for _, v := range asList(b[fmt.Sprintf("r%d", i)]) {
			d, err := decision(kind, r, short, v)
			if err != nil {
				return nil, err
			}
			rep.Decisions = append(rep.Decisions, d)
		}
	}
	sort.Slice(rep.Decisions, func(i, j int) bool {
		a, b := rep.Decisions[i], rep.Decisions[j]
		if a.Kind != b.Kind {
			return a.Kind == Deny
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Rule != b.Rule {
			return a.Rule < b.Rule
		}
		return a.Message < b.Message
	})
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// clone copies a report (its slices are its own).
func (r *Report) clone() *Report {
	c := *r
	c.Rules = append([]string{}, r.Rules...)
	c.Services = append([]string{}, r.Services...)
	c.Decisions = append([]Decision{}, r.Decisions...)
	if r.Excepted != nil {
		c.Excepted = append([]string{}, r.Excepted...)
	}
	return &c
}

// mentionsNondeterministic reports whether a module refers to a built-in whose result is not a function of
// its arguments (time.now_ns, rand.intn, uuid.rfc4122, ...): its decisions are then never reused.
func mentionsNondeterministic(m *ast.Module) bool {
	found := false
	ast.WalkRefs(m, func(r ast.Ref) bool {
		if b, ok := ast.BuiltinMap[r.String()]; ok && b.Nondeterministic {
			found = true
		}
		return found
	})
	return found
}

// inputValue converts the document to an OPA value once, through its JSON form (what conftest reads).
func inputValue(b []byte) (ast.Value, error) {
	var v any
	if err := util.NewJSONDecoder(bytes.NewReader(b)).Decode(&v); err != nil {
		return nil, err
	}
	return ast.InterfaceToValue(v)
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// shortName is a rule's name without its deny_/violation_/warn_ prefix, as conftest's exceptions name it.
func shortName(rule string) string {
	switch rule {
	case "deny", "violation", "warn":
		return ""
	}
	for _, p := range []string{"violation_", "deny_", "warn_"} {
		rule = strings.TrimPrefix(rule, p)
	}
	return rule
}

func decision(kind, rule, short string, v any) (Decision, error) {
	d := Decision{Kind: kind, Rule: short, Source: rule}
	switch m := v.(type) {
	case string:
		d.Message = m
	case map[string]any:
		msg, ok := m["msg"].(string)
		if !ok {
			return d, fault.InvalidErr(fmt.Errorf("policy rule %s: a message object needs a string msg", rule))
		}
		d.Message = msg
		if s, ok := m["service"].(string); ok {
			d.Service = s
		}
		if s, ok := m["rule"].(string); ok && d.Rule == "" {
			d.Rule = s
		}
	default:
		return d, fault.InvalidErr(fmt.Errorf("policy rule %s: a message must be a string or an object with msg", rule))
	}
	if d.Rule == "" {
		d.Rule = rule
	}
	return d, nil
}
