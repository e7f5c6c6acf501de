package reconcile

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/sabeiro/sawmill/internal/policy"
	"github.com/sabeiro/sawmill/internal/stack"
	"github.com/sabeiro/sawmill/internal/verify"
)

// Signatures is the signature step: every service image of the wanted stack is resolved to a digest and its
// signatures verified (internal/verify); a rejection refuses the whole stack (fault.Refused, exit 3) before
// anything is observed or written; otherwise every image is rewritten to `repo:tag@sha256:...`, so the
// digest that was verified is the one deployed. The results are kept for the policy step (Results) and
// printed to Out.
type Signatures struct {
	Verifier *verify.Verifier
	Log      *slog.Logger
	// Out receives one line per image. Nil: logged only.
	Out io.Writer

	mu   sync.Mutex
	last map[string]policy.Signature
}

// Check is a reconcile Check that verifies and pins the images of wanted.
func (s *Signatures) Check(ctx context.Context, wanted *stack.Stack) error {
	seen := map[string]bool{}
	var refs []string
	for _, svc := range wanted.Services {
		if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil && !seen[cs.Image] {
			seen[cs.Image] = true
			refs = append(refs, cs.Image)
		}
	}
	sort.Strings(refs)
	results, err := s.Verifier.VerifyAll(ctx, refs)
	sigs := map[string]policy.Signature{}
	for _, r := range results {
		sig := PolicySignature(r)
		sigs[r.Ref] = sig
		if r.Pinned != "" {
			sigs[r.Pinned] = sig
		}
		line := fmt.Sprintf("image %s: %s", r.Ref, r.Status)
		if r.Digest != "" {
			line += " " + r.Digest
		}
		if len(r.Signers) > 0 {
			line += " signed by " + sig.Signer
		}
		if r.Reason != "" {
			line += " (" + r.Reason + ")"
		}
		if s.Out != nil {
			fmt.Fprintln(s.Out, line)
		}
		if s.Log != nil {
			s.Log.Info("signature", "stack", wanted.Name, "image", r.Ref, "digest", r.Digest, "status", string(r.Status), "signers", sig.Signer, "cached", r.Cached)
		}
	}
	s.mu.Lock()
	s.last = sigs
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("stack %s: %w", wanted.Name, err)
	}
	pinned := verify.PinnedRefs(results)
	for i := range wanted.Services {
		spec := &wanted.Services[i].Spec
		cs := spec.TaskTemplate.ContainerSpec
		if cs == nil {
			continue
		}
		if p, ok := pinned[cs.Image]; ok && p != cs.Image {
			cs.Image = p // the com.docker.stack.image label keeps the image as written, as docker's does
			stack.SetSpecHash(spec)
		}
	}
	return nil
}

// PolicySignature is a verification result as the policies' input names it: verified; unverified (the
// verification failed); or unknown (it could not be checked: the registry was unreachable, or the trust
// policy's warn mode let an unverified image through).
func PolicySignature(r verify.Result) policy.Signature {
	sig := policy.Signature{Signer: strings.Join(r.Signers, ", "), Reason: r.Reason}
	switch {
	case r.Status == verify.Verified:
		sig.Status = "verified"
	case verify.IsTransient(r.Err):
		sig.Status, sig.Reason = "unknown", "registry unreachable: "+r.Reason
	case r.Status == verify.Warned:
		sig.Status = "unknown"
	default:
		sig.Status = "unverified"
	}
	return sig
}

// Results returns the signature results of the last Check, by image reference (as written and pinned), for
// the policy input (policy.Gate.Signatures).
func (s *Signatures) Results(context.Context, *stack.Stack) (map[string]policy.Signature, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]policy.Signature, len(s.last))
	for k, v := range s.last {
		out[k] = v
	}
	return out, nil
}
