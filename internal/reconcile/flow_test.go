package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/sabeiro/sawmill/internal/compose"
	"github.com/sabeiro/sawmill/internal/fault"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/plan"
	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/stack"
	sw "github.com/sabeiro/sawmill/internal/swarm"
	"github.com/sabeiro/sawmill/internal/verify"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// calls records the order in which the fakes were called.
type calls []string

var callsMu sync.Mutex // a named stack is observed while the other fakes run

// add records s; a nil record (a benchmark's fakes) records nothing.
func (c *calls) add(s string) {
	if c == nil {
		return
	}
	callsMu.Lock()
	defer callsMu.Unlock()
	*c = append(*c, s)
}

// wantedStack is one service `shop_web` running image, owned by the agent.
func wantedStack(image string) *stack.Stack {
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "shop_web", Labels: map[string]string{
			stack.LabelNamespace: "shop", stack.LabelOwner: stack.OwnerValue, stack.LabelImage: image,
		}},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image}},
	}
	stack.SetSpecHash(&spec)
	return &stack.Stack{Name: "shop", Services: []stack.Service{{Name: "shop_web", Key: "web", Spec: spec}}}
}

type fakeLoader struct {
	calls *calls
	image string
	err   error
}

func (f fakeLoader) Load(context.Context, compose.Options) (*stack.Stack, error) {
	f.calls.add(StepLoad)
	if f.err != nil {
		return nil, f.err
	}
	return wantedStack(f.image), nil
}

type fakeVerifier struct {
	calls  *calls
	reject bool
}

func (f fakeVerifier) VerifyAll(_ context.Context, refs []string) ([]verify.Result, error) {
	f.calls.add(StepVerify)
	var out []verify.Result
	for _, r := range refs {
		if f.reject {
			out = append(out, verify.Result{Ref: r, Status: verify.Rejected, Reason: "no signature"})
			continue
		}
		out = append(out, verify.Result{Ref: r, Status: verify.Verified, Digest: digest, Pinned: r + "@" + digest, Signers: []string{"release-key"}})
	}
	if f.reject {
		return out, fault.RefusedErr(errors.New("image rejected: no signature"))
	}
	return out, nil
}

type fakeEvaluator struct {
	calls *calls
	deny  bool
	input *policy.Input
	// warn, when set, is the message of a warning on web.
	warn string
}

func (f *fakeEvaluator) EvaluateKeyed(_ context.Context, _ string, _ policy.Key, build func() *policy.Input) (*policy.Report, error) {
	f.calls.add(StepEvaluate)
	in := build()
	f.input = in
	rep := &policy.Report{Stack: in.Stack}
	if f.deny {
		rep.Decisions = []policy.Decision{{Kind: policy.Deny, Rule: "no_socket", Service: "web", Message: "web mounts the socket"}}
	}
	if f.warn != "" {
		rep.Decisions = append(rep.Decisions, policy.Decision{Kind: policy.Warn, Rule: "warn_latest", Service: "web", Message: f.warn})
	}
	return rep, nil
}

type fakeObserver struct {
	calls    *calls
	observed *stack.Stack
}

func (f fakeObserver) Observe(_ context.Context, name string) (*stack.Stack, error) {
	f.calls.add(StepObserve)
	if f.observed != nil {
		return f.observed, nil
	}
	return &stack.Stack{Name: name}, nil
}

type fakeApplier struct {
	calls  *calls
	writes *int
}

func (f fakeApplier) Apply(_ context.Context, p *plan.Plan) (*sw.Result, error) {
	f.calls.add(StepApply)
	if p.Writes() {
		*f.writes++
	}
	return &sw.Result{Plan: p}, nil
}

type fixture struct {
	calls  calls
	writes int
	eval   *fakeEvaluator
	flow   *Flow
}

func newFixture(image string, mode policy.Mode) *fixture {
	fx := &fixture{}
	fx.eval = &fakeEvaluator{calls: &fx.calls}
	fx.flow = &Flow{
		Load:       fakeLoader{calls: &fx.calls, image: image},
		Verify:     fakeVerifier{calls: &fx.calls},
		Policy:     fx.eval,
		PolicyMode: mode,
		Observe:    fakeObserver{calls: &fx.calls},
		Apply:      fakeApplier{calls: &fx.calls, writes: &fx.writes},
	}
	return fx
}

func TestFlowRunsTheStepsInOrder(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	c := fx.flow.Run(context.Background(), compose.Options{}) // unnamed: observed in its turn
	if c.Err != nil {
		t.Fatal(c.Err)
	}
	if want := []string{StepLoad, StepVerify, StepEvaluate, StepObserve, StepApply}; !slices.Equal(fx.calls, want) {
		t.Fatalf("steps %v, want %v", fx.calls, want)
	}
	if c.Plan == nil || c.Result == nil || fx.writes != 1 {
		t.Fatalf("plan %v, result %v, writes %d", c.Plan, c.Result, fx.writes)
	}
	// The verified digest is the one deployed.
	if got := c.Wanted.Services[0].Spec.TaskTemplate.ContainerSpec.Image; got != "registry.example/web:1@"+digest {
		t.Fatalf("image %s, want it pinned to the verified digest", got)
	}
}

func TestSignaturesReachThePolicies(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	if c := fx.flow.Run(context.Background(), compose.Options{}); c.Err != nil {
		t.Fatal(c.Err)
	}
	in := fx.eval.input
	if in == nil || len(in.Services) != 1 {
		t.Fatalf("the policies saw %+v", in)
	}
	if sig := in.Services[0].Image.Signature; sig.Status != policy.SignatureVerified || sig.Signer != "release-key" {
		t.Fatalf("the policies saw signature %+v, want verified by release-key", sig)
	}

	// Without the verify step (--skip-verify) the policies see unknown.
	fx = newFixture("registry.example/web:1", policy.ModeEnforce)
	fx.flow.Verify = nil
	if c := fx.flow.Run(context.Background(), compose.Options{}); c.Err != nil {
		t.Fatal(c.Err)
	}
	if sig := fx.eval.input.Services[0].Image.Signature; sig.Status != policy.SignatureUnknown {
		t.Fatalf("without verification the policies saw %+v, want unknown", sig)
	}
}

func TestRefusalStopsBeforeObserve(t *testing.T) {
	for name, tc := range map[string]struct {
		set      func(*fixture)
		step     string
		outcome  outcome.Outcome
		wantRuns []string
	}{
		"unsigned image": {
			set:  func(fx *fixture) { fx.flow.Verify = fakeVerifier{calls: &fx.calls, reject: true} },
			step: StepVerify, outcome: outcome.Refused, wantRuns: []string{StepLoad, StepVerify},
		},
		"policy deny": {
			set:  func(fx *fixture) { fx.eval.deny = true },
			step: StepEvaluate, outcome: outcome.Refused, wantRuns: []string{StepLoad, StepVerify, StepEvaluate},
		},
		"invalid compose": {
			set: func(fx *fixture) {
				fx.flow.Load = fakeLoader{calls: &fx.calls, err: fault.InvalidErr(errors.New("compose.yaml:3: services.web.image: must be a string"))}
			},
			step: StepLoad, outcome: outcome.Invalid, wantRuns: []string{StepLoad},
		},
	} {
		t.Run(name, func(t *testing.T) {
			fx := newFixture("registry.example/web:1", policy.ModeEnforce)
			tc.set(fx)
			c := fx.flow.Run(context.Background(), compose.Options{})
			if c.Step != tc.step || outcome.Of(c.Err) != tc.outcome {
				t.Fatalf("failed at %q with %v (%s), want %q %s", c.Step, c.Err, outcome.Of(c.Err), tc.step, tc.outcome)
			}
			if !slices.Equal(fx.calls, tc.wantRuns) {
				t.Fatalf("steps %v, want %v", fx.calls, tc.wantRuns)
			}
			if fx.writes != 0 || c.Observed != nil || c.Result != nil {
				t.Fatalf("a refused stack was observed or written: writes %d", fx.writes)
			}
		})
	}
}

func TestWarnModeRecordsDenyAndGoesOn(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeWarn)
	fx.eval.deny = true
	c := fx.flow.Run(context.Background(), compose.Options{})
	if c.Err != nil {
		t.Fatalf("warn mode refused: %v", c.Err)
	}
	if c.Decisions == nil || len(c.Decisions.Denies()) != 1 || fx.writes != 1 {
		t.Fatalf("decisions %+v, writes %d", c.Decisions, fx.writes)
	}

	fx = newFixture("registry.example/web:1", policy.ModeOff)
	if c := fx.flow.Run(context.Background(), compose.Options{}); c.Err != nil || c.Decisions != nil || slices.Contains(fx.calls, StepEvaluate) {
		t.Fatalf("policy mode off evaluated: %v %v", fx.calls, c.Err)
	}
}

// written is what the flow wrote for the baseline stack: its wanted stack, as the engine would report it.
func written(t *testing.T) *stack.Stack {
	t.Helper()
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	c := fx.flow.Run(context.Background(), compose.Options{})
	if c.Err != nil {
		t.Fatal(c.Err)
	}
	return c.Wanted
}

func TestDriftIsAField(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	// What runs is what the agent wrote last time, then changed behind its back (`docker service update
	// --image`): the spec hash label still matches, the image does not.
	observed := written(t)
	observed.Services[0].Spec.TaskTemplate.ContainerSpec.Image = "evil.example/miner:1"
	fx.flow.Observe = fakeObserver{calls: &fx.calls, observed: observed}
	c := fx.flow.Run(context.Background(), compose.Options{})
	if c.Err != nil {
		t.Fatal(c.Err)
	}
	changes := c.Plan.Of(stack.KindService, plan.Configured)
	if len(changes) != 1 || !changes[0].Drift {
		t.Fatalf("changes %+v, want shop_web configured with Drift set", c.Plan.Changes)
	}

	// And the same stack unchanged: no drift, no write.
	fx = newFixture("registry.example/web:1", policy.ModeEnforce)
	fx.flow.Observe = fakeObserver{calls: &fx.calls, observed: written(t)}
	c = fx.flow.Run(context.Background(), compose.Options{})
	if c.Err != nil || c.Plan.Writes() || fx.writes != 0 {
		t.Fatalf("an unchanged stack: err %v, plan %+v", c.Err, c.Plan.Changes)
	}
}

func TestPlanOnlyWithoutApplier(t *testing.T) {
	fx := newFixture("registry.example/web:1", policy.ModeEnforce)
	fx.flow.Apply = nil
	c := fx.flow.Run(context.Background(), compose.Options{})
	if c.Err != nil || c.Plan == nil || c.Result != nil || slices.Contains(fx.calls, StepApply) {
		t.Fatalf("plan only: err %v, steps %v", c.Err, fx.calls)
	}
}

// blockingLoader loads once its stack has been observed (or fails after a minute of the bubble's clock).
type blockingLoader struct {
	fakeLoader
	observed <-chan struct{}
}

func (b blockingLoader) Load(ctx context.Context, o compose.Options) (*stack.Stack, error) {
	select {
	case <-b.observed:
		return b.fakeLoader.Load(ctx, o)
	case <-time.After(time.Minute):
		return nil, errors.New("the stack was not observed while it loaded")
	}
}

// signalObserver closes its channel when called.
type signalObserver struct {
	fakeObserver
	once *sync.Once
	ch   chan struct{}
}

func (s signalObserver) Observe(ctx context.Context, name string) (*stack.Stack, error) {
	defer s.once.Do(func() { close(s.ch) })
	return s.fakeObserver.Observe(ctx, name)
}

// A stack named in the options is read from the swarm while it loads (a no-op cycle waits on the list calls
// once, not after the load, verify and evaluate), exactly once; a refused one is never planned or written,
// and Run leaves nothing running.
func TestNamedStackIsObservedWhileItLoads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fx := newFixture("registry.example/web:1", policy.ModeEnforce)
		ch := make(chan struct{})
		fx.flow.Observe = signalObserver{fakeObserver{calls: &fx.calls}, &sync.Once{}, ch}
		fx.flow.Load = blockingLoader{fakeLoader{calls: &fx.calls, image: "registry.example/web:1"}, ch}
		c := fx.flow.Run(context.Background(), compose.Options{Stack: "shop"})
		if c.Err != nil {
			t.Fatal(c.Err)
		}
		if want := []string{StepObserve, StepLoad, StepVerify, StepEvaluate, StepApply}; !slices.Equal(fx.calls, want) {
			t.Fatalf("calls %v, want %v", fx.calls, want)
		}
		if c.Observed == nil || c.Observed.Name != "shop" || c.Plan == nil || fx.writes != 1 {
			t.Fatalf("observed %+v, plan %v, writes %d", c.Observed, c.Plan, fx.writes)
		}

		fx = newFixture("registry.example/web:1", policy.ModeEnforce)
		fx.flow.Verify = fakeVerifier{calls: &fx.calls, reject: true}
		c = fx.flow.Run(context.Background(), compose.Options{Stack: "shop"})
		if c.Step != StepVerify || c.Observed != nil || c.Plan != nil || fx.writes != 0 {
			t.Fatalf("refused stack: step %q, observed %v, plan %v, writes %d", c.Step, c.Observed, c.Plan, fx.writes)
		}
		synctest.Wait()
	})
}

func ExampleFlow() {
	var log calls
	f := &Flow{
		Load:    fakeLoader{calls: &log, image: "registry.example/web:1"},
		Verify:  fakeVerifier{calls: &log},
		Observe: fakeObserver{calls: &log},
	}
	c := f.Run(context.Background(), compose.Options{})
	fmt.Println(log, c.Plan.Changes[0].Name, c.Plan.Changes[0].Action)
	// Output: [load verify observe] shop_web created
}
