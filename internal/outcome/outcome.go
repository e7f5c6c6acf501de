// Package outcome is how a cycle (or a command) ends, as the agent reports it everywhere, and the one table
// from an outcome to its exit code, metric label and GitLab commit-status state.
//
// In: an error classified by internal/fault (or none). Out: an Outcome and its Row. It imports internal/fault
// only.
package outcome

import "github.com/sabeiro/sawmill/internal/fault"

// Outcome is how a cycle (or a command) ended: the daemon's /status and state file, the metric labels, the
// GitLab commit status and the exit code all say it. Table is the one place that maps between them.
type Outcome string

// The outcomes.
const (
	// Success: the release was applied and converged (or nothing needed to change).
	Success Outcome = "success"
	// Failed: the rollout was attempted and failed; the previous version keeps running.
	Failed Outcome = "failed"
	// Rejected outcomes: nothing was touched.
	Invalid Outcome = "invalid"
	Refused Outcome = "refused"
	// Standby: another agent holds the lease, or there is nothing to deploy yet. Nothing was done.
	Standby Outcome = "standby"
	// Error: the source, the registry or the engine could not be reached, or an unclassified error; nothing
	// changed and the cycle is retried with backoff.
	Error Outcome = "error"
)

// Row is what one outcome means to each reader.
type Row struct {
	// Exit is the agent's exit code.
	Exit int
	// Metric is the reason label of sawmill_rejections_total; empty for an outcome that is not a rejection.
	Metric string
	// CommitState is the GitLab commit status state reported; empty: nothing is reported.
	CommitState string
}

// Table maps every outcome to its exit code, metric label and GitLab commit-status state.
var Table = map[Outcome]Row{
	Success: {Exit: 0, CommitState: "success"},
	Standby: {Exit: 0},
	Failed:  {Exit: 1, Metric: "rollout", CommitState: "failed"},
	Error:   {Exit: 1, Metric: "error"},
	Invalid: {Exit: 2, Metric: "invalid", CommitState: "failed"},
	Refused: {Exit: 3, Metric: "refused", CommitState: "failed"},
}

// Row returns o's row of the table.
func (o Outcome) Row() Row { return Table[o] }

// Of is the outcome of an error: Success for nil, else by its fault.Kind.
func Of(err error) Outcome {
	if err == nil {
		return Success
	}
	switch fault.KindOf(err) {
	case fault.Rollout:
		return Failed
	case fault.Invalid:
		return Invalid
	case fault.Refused:
		return Refused
	}
	return Error
}

// Worse reports whether o is a worse outcome than p, in the order success < standby < error < failed <
// invalid < refused (the order of the agent's exit codes, a refusal above all): a cycle over several
// stacks reports the worst.
func (o Outcome) Worse(p Outcome) bool { return rank[o] > rank[p] }

var rank = map[Outcome]int{Success: 0, Standby: 1, Error: 2, Failed: 3, Invalid: 4, Refused: 5}
