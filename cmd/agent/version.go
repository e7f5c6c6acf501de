package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// version is the agent's version, set at build time (-ldflags "-X main.version=v1.2.3"; the image's and the
// release assets' builds do).
var version = "dev"

func versionCmd(d deps) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(d.stdout, version) },
	}
}
