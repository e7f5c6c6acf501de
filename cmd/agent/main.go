// Command agent deploys compose stacks to a Docker Swarm: it plans, applies and waits for convergence, and
// keeps the previous version running when a rollout fails. This package is flags, configuration, output and
// exit codes only: the flow itself is internal/reconcile.
//
// Exit codes, the same for every command: 0 done; 1 the rollout failed (the previous version keeps
// running) or another runtime error; 2 invalid input or usage (nothing touched); 3 refused by signature or
// policy checks (nothing touched).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sabeiro/sawmill/cmd/internal/startgc"
	"github.com/sabeiro/sawmill/internal/outcome"
	"github.com/sabeiro/sawmill/internal/redact"
	"github.com/sabeiro/sawmill/internal/swarm"
)

func main() {
	// GOGC in the environment wins; else the command's measured setting (gcPercent). Until here the
	// collector was off (cmd/internal/startgc: package initialisation).
	startgc.Restore(gcPercent(os.Args[1:]))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], deps{stdout: os.Stdout, stderr: os.Stderr, connect: connectDocker})
	stop()
	os.Exit(code)
}

// gcPercent is the garbage collector's target for the command args run, chosen from measurements
// (docs/benchmarks.md, "GC settings"). The one-shot commands spend most of their time in compose-go's load,
// which makes a lot of short-lived garbage while the live heap stays small: at 400, `agent check` of 100
// services executes 28% fewer instructions than at Go's default 100 (1.41 G against 1.96 G; 800 saves 5%
// more for 30 MB more peak memory). The daemon (`agent run`) keeps the default: at 400 its RSS after 100
// no-op cycles is 80 MB against 50 MB, for the same cycle time.
func gcPercent(args []string) int {
	if c, _, err := newRoot(deps{stdout: io.Discard, stderr: io.Discard, redact: redact.New()}).Find(args); err == nil && c.Name() == "run" {
		return 100
	}
	return 400
}

// usageError marks errors in the command line itself.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// deps are what the commands take from the outside world.
type deps struct {
	stdout, stderr io.Writer
	// connect returns the Docker client (the usual Docker environment names the engine).
	connect func() (swarm.Client, error)
	// redact cleans everything written to stdout, stderr and the log; run sets it.
	redact *redact.Redactor
}

func connectDocker() (swarm.Client, error) { return swarm.Connect(os.Getenv("DOCKER_CERT_PATH")) }

// run executes the agent with args and returns the exit code.
func run(ctx context.Context, args []string, d deps) int {
	// Every string the agent writes passes one redactor: the commands teach it the values in play.
	d.redact = redact.New()
	d.stdout, d.stderr = d.redact.Writer(d.stdout), d.redact.Writer(d.stderr)
	stderr := d.stderr
	cmd := newRoot(d)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "error:", err)
	return exitCode(err)
}

// exitError is an error that carries its exit code (the outcome of `run --once`).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// exitCode is the one place an error becomes an exit code: usage errors are 2, the rest as the outcome
// table says (internal/outcome).
func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	var e exitError
	if errors.As(err, &e) {
		return e.code
	}
	return outcome.Of(err).Row().Exit
}

// newLogger writes through the redactor of d.
func newLogger(d deps, level, format string) (*slog.Logger, error) {
	w := d.stderr
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: %w", level, err)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(d.redact.Handler(slog.NewTextHandler(w, opts))), nil
	case "json":
		return slog.New(d.redact.Handler(slog.NewJSONHandler(w, opts))), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: use text or json", format)}
}
