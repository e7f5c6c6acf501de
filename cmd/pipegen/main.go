// Command pipegen generates the GitLab CI child pipeline of a Sawmill repository from its
// layout (images/, stacks/, policies/, pipegen.yaml) and the git diff, lints it, writes the
// release the pipeline publishes, and sets up a repository (docs/pipegen.md).
//
// This package is thin: flags, pipegen.yaml and the environment are read here and only here,
// turned into inputs of internal/discover, internal/pipeline, internal/release and
// internal/cilint; exit codes are mapped here only:
//
//	0 success
//	1 failure (bad input, git, registry, I/O)
//	2 usage error (unknown flag or command, wrong arguments)
//	3 lint: the file is not a valid GitLab CI configuration
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
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitInvalid = 3
)

// errInvalid marks a lint verdict "not valid" (as opposed to not being able to check).
var errInvalid = errors.New("invalid CI configuration")

// usageError marks errors in the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	// The collector was off while the packages initialised (cmd/internal/startgc). A generate of
	// 1,000 images allocates ~15 MB, most of it live until the pipeline is written: at Go's
	// default target (100) 15% of its CPU profile was collection; at 400 a generate took 34 ms
	// instead of 45 ms in a test binary (go test -bench, one run under load), for 30 MB peak RSS
	// instead of 25 MB (docs/benchmarks.md). At 400 one collection still ran (at 16 MB, reclaiming
	// 10 MB): the collector now stays off below a soft limit of 64 MiB (peak RSS unchanged at 31 MB
	// for 1,000 images; the goal is < 100 MB). GOGC or GOMEMLIMIT in the environment win.
	startgc.OffWithLimit(64<<20, 400)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run executes pipegen with args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{
		stdout: stdout,
		stderr: stderr,
		getenv: getenv,
		log:    slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: dropTime})),
	}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "pipegen:", err)
	var ue usageError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errInvalid):
		return exitInvalid
	}
	return exitFailure
}

// dropTime keeps log lines deterministic.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}
