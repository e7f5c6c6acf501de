package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/sabeiro/sawmill/internal/reconcile"
	"github.com/sabeiro/sawmill/internal/swarm"
)

// swarmPins keeps the daemon's pin in the swarm, beside the lease named lease (so the lease's own list call
// reads it).
func swarmPins(c swarm.Client, lease, environment string, l *swarm.Lease) *reconcile.SwarmPins {
	if lease == "" {
		lease = defaultConfig().Lease.Name
	}
	return &reconcile.SwarmPins{Client: c, Name: lease, Environment: environment, Listed: l.Listed, MaxAge: l.RenewEvery()}
}

// leaseSettings are what agent history and agent unpin need of the daemon's settings to find the swarm's
// pin: the lease (its name, or disabled) and the environment, from $SAWMILL_LEASE_NAME,
// $SAWMILL_LEASE_DISABLED, $SAWMILL_ENVIRONMENT, else --config.
type leaseSettings struct {
	Environment string `yaml:"environment"`
	Lease       struct {
		Name     string `yaml:"name"`
		Disabled bool   `yaml:"disabled"`
	} `yaml:"lease"`
}

func leaseOf(cmd *cobra.Command) (leaseSettings, error) {
	var s leaseSettings
	if path, _ := cmd.Flags().GetString("config"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return s, usageError{fmt.Errorf("config %s: %w", path, err)}
		}
		if err := yaml.Unmarshal(b, &s); err != nil {
			return s, usageError{fmt.Errorf("config %s: %w", path, err)}
		}
	}
	if v := os.Getenv("SAWMILL_LEASE_NAME"); v != "" {
		s.Lease.Name = v
	}
	if v := os.Getenv("SAWMILL_ENVIRONMENT"); v != "" {
		s.Environment = v
	}
	if v := os.Getenv("SAWMILL_LEASE_DISABLED"); v != "" {
		s.Lease.Disabled, _ = strconv.ParseBool(v)
	}
	if s.Lease.Name == "" {
		s.Lease.Name = defaultConfig().Lease.Name
	}
	return s, nil
}

// sharedPin opens the swarm's pin store of the daemon's lease; nil when the lease is disabled (the pin is
// then the one agent's own, in its state directory), or needEnv and the environment is unknown.
func sharedPin(cmd *cobra.Command, d deps, needEnv bool) (*reconcile.SwarmPins, func(), error) {
	s, err := leaseOf(cmd)
	if err != nil || s.Lease.Disabled || (needEnv && s.Environment == "") {
		return nil, func() {}, err
	}
	c, err := d.connect()
	if err != nil {
		return nil, func() {}, err
	}
	return &reconcile.SwarmPins{Client: c, Name: s.Lease.Name, Environment: s.Environment}, func() { c.Close() }, nil
}

// unpinSwarm removes the swarm's pin (the one every agent of the swarm holds to), whichever agent's task
// this runs in; the acting agent follows the newest release from its next cycle. It reports the release that
// was pinned ("" when none was), and whether the swarm was reached (false: the lease is disabled).
func unpinSwarm(cmd *cobra.Command, d deps) (was string, reached bool, err error) {
	pins, done, err := sharedPin(cmd, d, false)
	if err != nil || pins == nil {
		return "", false, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	defer cancel()
	names, err := pins.Names(ctx)
	if err != nil {
		return "", true, fmt.Errorf("unpin: %w", err)
	}
	if len(names) == 0 {
		return "", true, nil
	}
	was = strings.Join(names, ", ")
	if pins.Environment != "" {
		// The pinned release, when the pin reads (an unreadable one is removed all the same).
		if p, err := pins.Load(ctx); err == nil && p != nil {
			was = p.Release
		}
	}
	if err := pins.Save(ctx, nil); err != nil {
		return "", true, fmt.Errorf("unpin: %w", err)
	}
	return was, true, nil
}

// swarmPinOr returns the swarm's pin (agent history shows it: a standby's state file does not know a pin
// another agent set), or local when the lease is disabled or the swarm cannot be read (said on stderr).
func swarmPinOr(cmd *cobra.Command, d deps, local *reconcile.Pin) *reconcile.Pin {
	pins, done, err := sharedPin(cmd, d, true)
	if err == nil && pins == nil {
		return local // no lease, or no environment to check the pin against (--config names it)
	}
	defer done()
	var p *reconcile.Pin
	if err == nil {
		ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
		defer cancel()
		p, err = pins.Load(ctx)
	}
	if err != nil {
		fmt.Fprintf(d.stderr, "warning: the swarm's pin could not be read (%v); showing this agent's\n", err)
		return local
	}
	return p
}

// checkActing refuses to leave a request with a standby: with the lease, only the agent holding it reads
// requests, and one left with a standby would wait until that agent acts. The agent of the state directory
// dir is named as holderID names it (this host, dir's holder file); nothing is checked when the lease is
// disabled, the agent never ran with the lease, or nobody holds it now.
func checkActing(cmd *cobra.Command, d deps, dir string) error {
	s, err := leaseOf(cmd)
	if err != nil || s.Lease.Disabled {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, "holder"))
	if err != nil {
		return nil
	}
	host, _ := os.Hostname()
	me := host + "/" + strings.TrimSpace(string(b))
	c, err := d.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	defer cancel()
	holder, err := swarm.LeaseHolder(ctx, c, s.Lease.Name, time.Now())
	if err != nil {
		return err
	}
	if holder != "" && holder != me {
		return usageError{fmt.Errorf("this agent (%s) stands by: %s holds the lease %s; run agent rollback in that agent's task (sawmill_leader 1)", me, holder, s.Lease.Name)}
	}
	return nil
}

// rollbackShared leaves req as a request config beside the lease, where the agent holding the lease finds
// it (whichever agent's task this runs in), and waits (--wait) for that agent's answer config. The release is
// resolved by the acting agent: its history is the swarm's (an empty --to: the previous successful release).
func rollbackShared(cmd *cobra.Command, d deps, sp *reconcile.SwarmPins, req *reconcile.Request) error {
	req.ID = reconcile.NewRequestID()
	if err := reconcile.CheckRequest(req); err != nil {
		return usageError{err}
	}
	what := "rollback to " + req.To
	if req.To == "" {
		what = "rollback to the previous successful release"
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	err := sp.Submit(ctx, req, time.Now())
	cancel()
	if err != nil {
		return err
	}
	name := sp.RequestConfig(req.ID)
	wait, _ := cmd.Flags().GetDuration("wait")
	if wait <= 0 {
		fmt.Fprintf(d.stdout, "%s requested: the agent holding the lease %s reads it within seconds (swarm config %s)\n", what, sp.Name, name)
		return nil
	}
	ctx, cancel = context.WithTimeout(cmd.Context(), wait)
	defer cancel()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return exitError{code: 1, err: fmt.Errorf("%s: no answer from the agent holding the lease %s within %s; the request stays queued as the swarm config %s until an agent takes it (docker config rm %s cancels it)",
				what, sp.Name, wait, name, name)}
		case <-t.C:
		}
		a, err := sp.ReadAnswer(ctx, req.ID)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			return exitError{code: 1, err: fmt.Errorf("%s: %w", what, err)}
		}
		if a != nil {
			return answered(d, what, a)
		}
	}
}
