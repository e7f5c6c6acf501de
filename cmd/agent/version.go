package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is the agent's version, set at build time (-ldflags "-X main.version=v1.2.3"; the image's and the
// release assets' builds do). Unset, the module's version from the build information is shown.
var version = ""

// versionCmd is `agent version`: the version, the VCS revision and the Go version, read from the binary (no
// engine, no file: bench/process-start.sh measures process start with it).
func versionCmd(d deps) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(d.stdout, versionString())
			return err
		},
	}
}

func versionString() string {
	v, revision, modified := version, "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	out := "agent " + v
	if revision != "" {
		out += " " + revision[:min(12, len(revision))]
		if modified {
			out += "+modified"
		}
	}
	return out + " " + runtime.Version()
}
