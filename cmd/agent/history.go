package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moby/moby/client"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// historyCmd is `agent history`: the releases the daemon rolled out, read from its state directory.
func historyCmd(d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "history [--config agent.yaml | --state-dir DIR] [--json]",
		Short: "List the releases the daemon rolled out (newest first), and the pin",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, saved, err := savedState(cmd)
			if err != nil {
				return err
			}
			saved.Pin = swarmPinOr(cmd, d, saved.Pin)
			if asJSON, _ := cmd.Flags().GetBool("json"); asJSON {
				history := saved.History
				if history == nil {
					history = []reconcile.HistoryEntry{}
				}
				enc := json.NewEncoder(d.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Pin     *reconcile.Pin           `json:"pin"`
					History []reconcile.HistoryEntry `json:"history"`
				}{saved.Pin, history})
			}
			printHistory(d.stdout, saved)
			return nil
		},
	}
	stateDirFlags(cmd)
	cmd.Flags().Bool("json", false, "print JSON")
	return cmd
}

// printHistory prints the history as a table, and the pin.
func printHistory(w io.Writer, s reconcile.Saved) {
	if p := s.Pin; p != nil {
		fmt.Fprintf(w, "pinned to %s since %s: %s (until a release newer than %s, or agent unpin)\n\n", p.Release, p.Since.UTC().Format(time.RFC3339), p.Reason, p.Over)
	}
	if len(s.History) == 0 {
		fmt.Fprintln(w, "no release rolled out yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RELEASE\tCOMMIT\tOUTCOME\tTIME\tKEPT\tIMAGES")
	for _, h := range s.History {
		commit := h.Commit
		if len(commit) > 12 {
			commit = commit[:12]
		}
		name := h.Release
		if h.Rollback {
			name += " (rollback)"
		}
		kept := "no"
		if h.Kept {
			kept = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", name, commit, h.Outcome, h.Time.UTC().Format(time.RFC3339), kept, strings.Join(h.Images, " "))
	}
	tw.Flush()
}

// rollbackCmd is `agent rollback`: the daemon re-applies a kept release (signatures and policies checked
// again) and pins the environment there.
func rollbackCmd(d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback [--to RELEASE] [--reason TEXT] [--wait 5m] [--config agent.yaml | --state-dir DIR]",
		Short: "Re-apply an earlier release (default: the previous successful one) and pin the environment there",
		Long: `The daemon re-applies the release through the same verification and policies, and pins the environment
there: it does not roll forward until a newer deployment arrives or agent unpin. RELEASE is a release of
agent history (deployment-12) or a commit (7 characters or more); a deployment that is not in this agent's
history (another agent rolled it out) is fetched from GitLab again by the daemon. The command waits for the daemon's answer
(--wait 0: it only leaves the request) and exits as apply does: 0 rolled back and pinned, 1 the rollout failed
(or no answer in time), 2 no such release, 3 refused by signatures or policies.

With the lease and the environment known (--config, or $SAWMILL_ENVIRONMENT), the request goes through the
swarm (a config <lease>.request-<id> beside the lease): run it in any agent's task, a standby's included;
the agent holding the lease acts and answers. With lease.disabled (or no environment), it is left in the
state directory, which must be the acting agent's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			to, _ := cmd.Flags().GetString("to")
			reason, _ := cmd.Flags().GetString("reason")
			// With the lease, the request travels through the swarm: any agent's task reaches the acting agent.
			if sp, done, err := sharedPin(cmd, d, true); err != nil {
				return err
			} else if sp != nil {
				defer done()
				return rollbackShared(cmd, d, sp, &reconcile.Request{Action: reconcile.ActionRollback, To: to, Reason: reason})
			}
			dir, saved, err := savedState(cmd)
			if err != nil {
				return err
			}
			h, err := reconcile.FindRelease(saved.History, to)
			switch {
			case err != nil && strings.HasPrefix(to, "deployment-"):
				// Not in this agent's history (another agent rolled it out): the daemon fetches that
				// deployment from GitLab again, or answers that it cannot.
				h = reconcile.HistoryEntry{Release: to, Kept: true}
			case err != nil:
				return usageError{err}
			}
			// With the lease, a deployment this agent did not keep (another agent rolled it out: the history is
			// shared through the swarm) is fetched from GitLab again by the daemon.
			lease, _ := leaseOf(cmd)
			if !h.Kept && (lease.Lease.Disabled || !strings.HasPrefix(h.Release, "deployment-")) {
				return usageError{fmt.Errorf("release %s was not kept in %s: it cannot be rolled back to (re-run its deploy job in GitLab instead)", h.Release, dir)}
			}
			if err := checkActing(cmd, d, dir); err != nil {
				return err
			}
			req := &reconcile.Request{Action: reconcile.ActionRollback, To: h.Release, Reason: reason}
			return request(cmd, d, dir, req, "rollback to "+h.Release)
		},
	}
	stateDirFlags(cmd)
	cmd.Flags().String("to", "", "the release (agent history) or commit to roll back to; default: the previous successful one")
	cmd.Flags().String("reason", "", "why (shown with the pin on the status page and in /status)")
	cmd.Flags().Duration("wait", 5*time.Minute, "how long to wait for the daemon's answer; 0: do not wait")
	return cmd
}

// unpinCmd is `agent unpin`: the daemon follows the newest release again.
func unpinCmd(d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unpin [--wait 5m] [--config agent.yaml | --state-dir DIR]",
		Short: "Lift the pin of agent rollback: the daemon follows the newest release again",
		Long: `With the lease (the default), unpin removes the swarm's pin, from any agent's task: the acting agent
follows the newest release from its next cycle (--wait does not apply). With lease.disabled, it asks the
daemon through its state directory and waits for its answer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, saved, err := savedState(cmd)
			if err != nil {
				return err
			}
			// The swarm's pin is the one every agent holds to: removing it unpins whichever agent acts.
			if was, reached, err := unpinSwarm(cmd, d); err != nil {
				return err
			} else if reached && was == "" {
				fmt.Fprintln(d.stdout, "not pinned: the daemon follows the newest release")
				if saved.Pin != nil {
					lease, _ := leaseOf(cmd)
					fmt.Fprintf(d.stderr, "note: the swarm has no pin beside the lease %s, but this agent's state file still names %s (it was lifted while this agent stood by, and is cleared when it acts; if the lease has another name, --config names it)\n",
						lease.Lease.Name, saved.Pin.Release)
				}
				return nil
			} else if reached {
				fmt.Fprintf(d.stdout, "unpinned from %s: the acting agent follows the newest release from its next cycle\n", was)
				return nil
			}
			if saved.Pin == nil {
				fmt.Fprintln(d.stdout, "not pinned: the daemon follows the newest release")
				return nil
			}
			return request(cmd, d, dir, &reconcile.Request{Action: reconcile.ActionUnpin}, "unpin from "+saved.Pin.Release)
		},
	}
	stateDirFlags(cmd)
	cmd.Flags().Duration("wait", 5*time.Minute, "how long to wait for the daemon's answer; 0: do not wait")
	return cmd
}

// request leaves req in the state directory and waits (--wait) for the daemon's answer, whose outcome is
// the exit code.
func request(cmd *cobra.Command, d deps, dir string, req *reconcile.Request, what string) error {
	if err := reconcile.SubmitRequest(dir, req); err != nil {
		return err
	}
	wait, _ := cmd.Flags().GetDuration("wait")
	if wait <= 0 {
		fmt.Fprintf(d.stdout, "%s requested: the daemon reads it at its next cycle (%s)\n", what, filepath.Join(dir, reconcile.RequestFileName))
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), wait)
	defer cancel()
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return exitError{code: 1, err: fmt.Errorf("%s: no answer from the daemon within %s; the request stays queued in %s (remove it to cancel)",
				what, wait, filepath.Join(dir, reconcile.RequestFileName))}
		case <-t.C:
		}
		saved, err := reconcile.ReadSaved(dir)
		if err != nil || saved.Answer == nil || saved.Answer.ID != req.ID {
			continue
		}
		return answered(d, what, saved.Answer)
	}
}

// answered prints the daemon's answer a and returns its outcome as the exit code (0 only for success).
func answered(d deps, what string, a *reconcile.Answer) error {
	if a.Outcome == outcome.Success {
		fmt.Fprintf(d.stdout, "%s: %s\n", what, a.Reason)
		return nil
	}
	code := a.Outcome.Row().Exit
	if code == 0 {
		code = 1
	}
	return exitError{code: code, err: fmt.Errorf("%s: %s: %s", what, a.Outcome, a.Reason)}
}

// savedState reads the state file of the daemon's state directory (stateDirOf).
func savedState(cmd *cobra.Command) (string, reconcile.Saved, error) {
	dir, err := stateDirOf(cmd)
	if err != nil {
		return "", reconcile.Saved{}, err
	}
	saved, err := reconcile.ReadSaved(dir)
	return dir, saved, err
}

// stateDirFlags adds --config and --state-dir.
func stateDirFlags(cmd *cobra.Command) {
	cmd.Flags().String("config", "", "the daemon's config file (its state_dir)")
	cmd.Flags().String("state-dir", defaultConfig().StateDir, "the daemon's state directory")
}

// stateDirOf is the daemon's state directory as `agent run` would take it: --state-dir, else
// $SAWMILL_STATE_DIR, else state_dir of --config, else the default.
func stateDirOf(cmd *cobra.Command) (string, error) {
	dir, _ := cmd.Flags().GetString("state-dir")
	if cmd.Flags().Changed("state-dir") {
		return dir, nil
	}
	if env := os.Getenv("SAWMILL_STATE_DIR"); env != "" {
		return env, nil
	}
	if path, _ := cmd.Flags().GetString("config"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", usageError{fmt.Errorf("config %s: %w", path, err)}
		}
		var c struct {
			StateDir string `yaml:"state_dir"`
		}
		if err := yaml.Unmarshal(b, &c); err != nil {
			return "", usageError{fmt.Errorf("config %s: %w", path, err)}
		}
		if c.StateDir != "" {
			return c.StateDir, nil
		}
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return "", usageError{fmt.Errorf("state directory %s does not exist (--state-dir or --config names the daemon's)", dir)}
	}
	return dir, nil
}

// replicas reads a stack's services with their task counts (one list call), for the status page.
func replicas(c swarm.Client) func(ctx context.Context, stack string) (map[string]reconcile.Replicas, error) {
	return func(ctx context.Context, stack string) (map[string]reconcile.Replicas, error) {
		l, err := c.ServiceList(ctx, client.ServiceListOptions{Status: true, Filters: make(client.Filters).Add("label", "com.docker.stack.namespace="+stack)})
		if err != nil {
			return nil, fmt.Errorf("list services of %s: %w", stack, err)
		}
		out := map[string]reconcile.Replicas{}
		for _, s := range l.Items {
			if s.ServiceStatus == nil {
				continue
			}
			r, d := s.ServiceStatus.RunningTasks, s.ServiceStatus.DesiredTasks
			out[s.Spec.Name] = reconcile.Replicas{Running: r, Desired: d, Health: reconcile.HealthOf(r, d)}
		}
		return out, nil
	}
}
