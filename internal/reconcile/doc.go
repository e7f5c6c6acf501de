// Package reconcile owns the agent's flow. One stack goes through ordered steps over one value, the Cycle:
//
//	load -> verify -> evaluate -> observe -> plan -> apply (and converge)
//
// load reads the compose files into the wanted stack (internal/compose); verify resolves every image to a
// digest, checks its signatures (internal/verify) and pins the image to the verified digest; evaluate runs
// the policies (internal/policy) on the pinned stack with the signature results; observe reads the stack
// from the swarm (when the options name the stack, the reading starts with the cycle and observe takes it);
// plan diffs wanted and observed (internal/plan); apply writes the plan and waits for convergence, rolling
// back a failed update (internal/swarm). A step that fails stops the cycle: a refusal by signatures or
// policies stops before anything is planned or written (an observation already under way is cancelled).
// Each stage is reached through a small interface declared here, so the flow is tested without Docker.
//
// The Loop (agent run) runs the flow for every stack of a release, repeatedly: take the swarm's lease, get
// the newest release from the source, run the stacks, record the outcome in the state file, and report it to
// GitLab. Its HTTP surface is internal/status. Between cycles of an unchanged release the daemon's flow reuses
// what did not change, each keyed by all it is made from: the loaded stack (MemoLoader: every option and
// every file of the release; the stack is shared, never changed), its pinned copy (the load's key and the
// pins), the policies' report (that key, every input option and the policy revision: policy.EvaluateKeyed)
// and each service's comparison (Flow.Differ). Once a cycle's record is final the Loop tells its Notifier
// (notify.go: the record and each stack's outcome and drift put back), which must only queue.
//
// The loop also keeps the history of the releases it rolled out, with a copy of each in the state directory
// (history.go), acts on the requests of agent rollback and agent unpin and holds the pin a rollback sets
// (pin.go), keeps that pin in the swarm beside the lease so that it holds whichever agent acts, fetching a
// pinned release it did not keep from the source again (swarmpin.go, pinshare.go), takes the requests that
// agent rollback leaves in the swarm from any agent's task and answers there (swarmrequest.go), shares the
// history through the swarm so a rollback's default target survives a takeover (swarmhistory.go), and
// assembles the status page's view: stacks, services, cycles, history, pin (view.go).
//
// Nothing here prints: the Cycle and the Record carry what happened, and cmd/agent renders them. Errors are
// classified by internal/fault; internal/outcome maps them to outcomes, exit codes and commit states.
//
// It is the only package that imports every stage: internal/compose, verify, policy, plan, swarm, source,
// report, stack, fault, outcome.
package reconcile
