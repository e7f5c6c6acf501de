package main

import (
	"github.com/sabeiro/sawmill/internal/redact"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

func renderCmd(v *viper.Viper, d deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "render -c compose.yaml [-c override.yaml ...] [--env NAME] [STACK]",
		Short: "Print the policy input document (JSON) of a stack, for conftest test or opa eval",
		Long: `Print the document the policies judge: the converted Swarm specs, the compose keys Swarm drops, the
environment and the signature results. Secret and config values are never in it; environment variable values
are (as in the compose files). conftest reaches the agent's decisions on it:

  agent render -c compose.yaml > stack.json
  conftest test --policy policies/ stack.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// What variables put into environment variables is shown as <redacted>: the document is for
			// policies and people, and a variable may hold a credential. (Images, ports and the rest keep their
			// values, so that conftest reaches the agent's decisions on the document.)
			seen := redact.New()
			in, err := loadInput(v, cmd, args, func(value string) { seen.Add(value) })
			if err != nil {
				return err
			}
			in.RedactEnv(seen.String)
			b, err := in.JSON()
			if err != nil {
				return err
			}
			_, err = d.stdout.Write(b)
			return err
		},
	}
	composeFlags(cmd)
	cacheFlag(cmd)
	trustFlag(cmd)
	preReleaseFlag(cmd)
	inputFlags(cmd)
	return cmd
}
