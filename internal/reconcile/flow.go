package reconcile

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/verify"
)

// Loader reads compose files into the wanted stack (compose.Load, through LoadFunc).
type Loader interface {
	Load(ctx context.Context, o compose.Options) (*stack.Stack, error)
}

// LoadFunc makes a function a Loader.
type LoadFunc func(ctx context.Context, o compose.Options) (*stack.Stack, error)

// Load calls f.
func (f LoadFunc) Load(ctx context.Context, o compose.Options) (*stack.Stack, error) {
	return f(ctx, o)
}

// Verifier checks the signatures of image references (*verify.Verifier).
type Verifier interface {
	VerifyAll(ctx context.Context, refs []string) ([]verify.Result, error)
}

// Evaluator runs the policies on the input document build makes (*policy.Engine). key names everything the
// document is made from (the zero key: not known); an evaluator may answer a key it judged before, under the
// same policies, without calling build.
type Evaluator interface {
	EvaluateKeyed(ctx context.Context, stack string, key policy.Key, build func() *policy.Input) (*policy.Report, error)
}

// keyedLoader is a Loader that also names what it loaded (MemoLoader): the same key, the same stack, which
// nobody may change; the zero key names nothing.
type keyedLoader interface {
	LoadKeyed(ctx context.Context, o compose.Options) (*stack.Stack, [sha256.Size]byte, error)
}

// Observer reads a stack from the swarm (swarm.Observer).
type Observer interface {
	Observe(ctx context.Context, stackName string) (*stack.Stack, error)
}

// Applier writes a plan and waits for convergence (*swarm.Applier).
type Applier interface {
	Apply(ctx context.Context, p *plan.Plan) (*swarm.Result, error)
}

// Flow is the steps of one stack. Fill the fields; Load and Observe are required.
type Flow struct {
	Load Loader
	// Verify checks signatures; nil skips the step (development only: the policies then see every signature
	// as unknown).
	Verify Verifier
	// Policy evaluates the policies; nil or PolicyMode off skips the step. In warn mode the decisions are
	// recorded and nothing is refused.
	Policy     Evaluator
	PolicyMode policy.Mode
	// Input is what the policies see besides the stack (environment, registries).
	Input   policy.InputOptions
	Observe Observer
	// Apply writes the plan; nil stops after the plan (agent plan).
	Apply Applier
	// Differ, when set, computes the plan and reuses the comparison of services unchanged since the last
	// cycle (the daemon); nil: plan.Compute.
	Differ *plan.Differ
	Log    *slog.Logger

	mu     sync.Mutex
	pinned map[string]pinnedStack // by stack: the last pinned copy of a named stack
}

// pinnedStack is a named stack with its images pinned, and its name.
type pinnedStack struct {
	key [sha256.Size]byte
	st  *stack.Stack
}

// Cycle is one stack's pass through the flow: what each step found, in order. A step that did not run
// leaves its field nil.
type Cycle struct {
	Options compose.Options
	// Wanted is the stack the compose files describe, its images pinned once verified.
	Wanted *stack.Stack
	// Signatures are the verification results, one per distinct image, sorted by reference.
	Signatures []verify.Result
	// Decisions are the policies' report (nil when the policies did not run).
	Decisions *policy.Report
	Observed  *stack.Stack
	Plan      *plan.Plan
	// Result is what apply did (nil when apply did not run).
	Result *swarm.Result
	// Step names the step that failed; Err is its error (classified by internal/fault).
	Step string
	Err  error

	early *early // the observation started with the cycle, if any
	// key names Wanted: a hash of everything it was made from (the loader's key, then the pins); zero when
	// the loader does not name what it loads.
	key [sha256.Size]byte
}

// The steps, in order.
const (
	StepLoad     = "load"
	StepVerify   = "verify"
	StepEvaluate = "evaluate"
	StepObserve  = "observe"
	StepPlan     = "plan"
	StepApply    = "apply"
)

type step struct {
	name string
	run  func(ctx context.Context, c *Cycle) error
}

func (f *Flow) steps() []step {
	return []step{
		{StepLoad, f.load},
		{StepVerify, f.verify},
		{StepEvaluate, f.evaluate},
		{StepObserve, f.observe},
		{StepPlan, f.plan},
		{StepApply, f.apply},
	}
}

// Run takes one stack through the steps and returns what happened; c.Err is the first error.
//
// When the options name the stack, the swarm is read while the files load, verify and evaluate (the list
// calls are most of a no-op cycle's wall time, and they do not depend on those steps); the observe step takes
// that observation, or its error, in its turn. Reading early changes nothing apply could do wrong: every
// update carries the observed Swarm version, which the engine refuses once it is stale, and a create of an
// object that appeared meanwhile fails on its name. A cycle that stops before observe cancels and discards
// it; Run returns once it has ended.
func (f *Flow) Run(ctx context.Context, o compose.Options) *Cycle {
	log := f.log()
	c := &Cycle{Options: o}
	if o.Stack != "" && f.Observe != nil {
		early, cancel := observeEarly(ctx, f.Observe, o.Stack)
		c.early = early
		defer func() { cancel(); <-early.done }() // no observation outlives its cycle
	}
	for _, s := range f.steps() {
		t0 := time.Now()
		err := s.run(ctx, c)
		log.Debug("step", "step", s.name, "stack", o.Stack, "elapsed", time.Since(t0))
		if err != nil {
			c.Step, c.Err = s.name, err
			return c
		}
	}
	return c
}

func (f *Flow) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

func (f *Flow) load(ctx context.Context, c *Cycle) error {
	if k, ok := f.Load.(keyedLoader); ok {
		st, key, err := k.LoadKeyed(ctx, c.Options)
		c.Wanted, c.key = st, key
		return err
	}
	st, err := f.Load.Load(ctx, c.Options)
	c.Wanted = st
	return err
}

// verify resolves every service image to a digest and verifies its signatures; a rejection refuses the whole
// stack (fault.Refused) before anything is written. Otherwise every image is rewritten to
// `repo:tag@sha256:...`, so the digest verified is the digest deployed: in a copy of the loaded stack (the
// loader's may be shared), the same copy while the stack and its pins are unchanged.
func (f *Flow) verify(ctx context.Context, c *Cycle) error {
	if f.Verify == nil {
		return nil
	}
	w := c.Wanted
	var refs []string
	for _, svc := range w.Services {
		if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil && !slices.Contains(refs, cs.Image) {
			refs = append(refs, cs.Image)
		}
	}
	slices.Sort(refs)
	results, err := f.Verify.VerifyAll(ctx, refs)
	c.Signatures = results
	for _, r := range results {
		f.log().Info("signature", "stack", w.Name, "image", r.Ref, "digest", r.Digest, "status", string(r.Status), "signers", strings.Join(r.Signers, ", "), "cached", r.Cached)
	}
	if err != nil {
		if onlyTransient(results) {
			// The registry could not answer: nothing is known about the release yet; retry, do not refuse.
			return fault.TransientErr(fmt.Errorf("stack %s: %w", w.Name, err))
		}
		return fmt.Errorf("stack %s: %w", w.Name, err)
	}
	c.Wanted, c.key = f.pin(w, c.key, verify.PinnedRefs(results))
	return nil
}

// evaluate runs the policies on the wanted stack with this cycle's signature results. In enforce mode a deny
// is a fault.Refused error.
func (f *Flow) evaluate(ctx context.Context, c *Cycle) error {
	if f.Policy == nil || f.PolicyMode == policy.ModeOff || f.PolicyMode == "" {
		return nil
	}
	in := f.Input
	if f.Verify != nil {
		in.Signatures = PolicySignatures(c.Signatures)
	}
	w := c.Wanted
	rep, err := f.Policy.EvaluateKeyed(ctx, w.Name, inputKey(c.key, in), func() *policy.Input { return policy.NewInput(w, in) })
	if err != nil {
		return err
	}
	c.Decisions = rep
	f.log().Info("policy", "stack", rep.Stack, "mode", string(f.PolicyMode), "revision", rep.Revision, "denies", rep.Count(policy.Deny), "warnings", rep.Count(policy.Warn), "elapsed", rep.Elapsed)
	if f.PolicyMode == policy.ModeEnforce {
		return rep.Err()
	}
	return nil
}

func (f *Flow) observe(ctx context.Context, c *Cycle) error {
	var st *stack.Stack
	var err error
	if e := c.early; e != nil && e.name == c.Wanted.Name {
		select {
		case <-e.done:
			st, err = e.st, e.err
		case <-ctx.Done():
			err = ctx.Err()
		}
	} else {
		st, err = f.Observe.Observe(ctx, c.Wanted.Name)
	}
	c.Observed = st
	return err
}

// pin returns w with every image of pins rewritten to its pinned reference, and the new stack's key: w itself
// when nothing changes; otherwise a copy that shares every unchanged part with w, which is never changed. A
// named stack (key not zero) pinned as before gets the same copy as before.
func (f *Flow) pin(w *stack.Stack, key [sha256.Size]byte, pins map[string]string) (*stack.Stack, [sha256.Size]byte) {
	named := key != [sha256.Size]byte{}
	if named {
		h := sha256.New()
		h.Write(key[:])
		for _, ref := range slices.Sorted(maps.Keys(pins)) {
			fmt.Fprintf(h, "pin %q %q\n", ref, pins[ref])
		}
		h.Sum(key[:0])
		f.mu.Lock()
		p, ok := f.pinned[w.Name]
		f.mu.Unlock()
		if ok && p.key == key {
			return p.st, key
		}
	}
	out := w
	for i, svc := range w.Services {
		cs := svc.Spec.TaskTemplate.ContainerSpec
		if cs == nil {
			continue
		}
		p, ok := pins[cs.Image]
		if !ok || p == cs.Image {
			continue
		}
		if out == w {
			cp := *w
			cp.Services = slices.Clone(w.Services)
			out = &cp
		}
		spec := &out.Services[i].Spec
		pinnedCS := *cs
		pinnedCS.Image = p // the com.docker.stack.image label keeps the image as written, as docker's does
		spec.TaskTemplate.ContainerSpec = &pinnedCS
		spec.Labels = maps.Clone(spec.Labels)
		stack.SetSpecHash(spec)
	}
	if named {
		f.mu.Lock()
		if f.pinned == nil {
			f.pinned = map[string]pinnedStack{}
		}
		f.pinned[w.Name] = pinnedStack{key: key, st: out}
		f.mu.Unlock()
	}
	return out, key
}

// inputKey names the policy input of the stack named key with the options o: key and every field of o, in Go
// syntax (fmt sorts map keys; TestInputKeyCoversEveryOption keeps that true of every field); the zero key
// when the stack has no name.
func inputKey(key [sha256.Size]byte, o policy.InputOptions) policy.Key {
	if key == ([sha256.Size]byte{}) {
		return policy.Key{}
	}
	h := sha256.New()
	h.Write(key[:])
	fmt.Fprintf(h, "%#v", o)
	var k policy.Key
	h.Sum(k[:0])
	return k
}

// early is an observation started with the cycle (Run).
type early struct {
	name string
	done chan struct{}
	st   *stack.Stack
	err  error
}

// observeEarly observes stack name through obs in a goroutine; cancel ends it, done closes when it returned.
func observeEarly(ctx context.Context, obs Observer, name string) (*early, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	e := &early{name: name, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.st, e.err = obs.Observe(ctx, name)
	}()
	return e, cancel
}

func (f *Flow) plan(_ context.Context, c *Cycle) error {
	compute := plan.Compute
	if f.Differ != nil {
		compute = f.Differ.Compute
	}
	p, err := compute(c.Wanted, c.Observed)
	c.Plan = p
	return err
}

func (f *Flow) apply(ctx context.Context, c *Cycle) error {
	if f.Apply == nil {
		return nil
	}
	f.log().Info("plan", "stack", c.Plan.Stack, "writes", c.Plan.Writes())
	res, err := f.Apply.Apply(ctx, c.Plan)
	c.Result = res
	return err
}

// onlyTransient reports whether every rejected image was rejected only because the registry could not answer.
func onlyTransient(results []verify.Result) bool {
	n := 0
	for _, r := range results {
		if r.Status == verify.Rejected {
			if !verify.IsTransient(r.Err) {
				return false
			}
			n++
		}
	}
	return n > 0
}

// PolicySignatures maps verification results to the policies' input, by image reference as written and as
// pinned: verified; unverified (the verification failed); or unknown (it could not be checked: the registry
// was unreachable, or the trust policy's warn mode let an unverified image through).
func PolicySignatures(results []verify.Result) map[string]policy.Signature {
	out := make(map[string]policy.Signature, 2*len(results))
	for _, r := range results {
		sig := policy.Signature{Signer: strings.Join(r.Signers, ", "), Reason: r.Reason}
		switch {
		case r.Status == verify.Verified:
			sig.Status = policy.SignatureVerified
		case verify.IsTransient(r.Err):
			sig.Status, sig.Reason = policy.SignatureUnknown, "registry unreachable: "+r.Reason
		case r.Status == verify.Warned:
			sig.Status = policy.SignatureUnknown
		default:
			sig.Status = policy.SignatureUnverified
		}
		out[r.Ref] = sig
		if r.Pinned != "" {
			out[r.Pinned] = sig
		}
	}
	return out
}
