package cli

import (
	"github.com/spf13/cobra"
)

func newGPUsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "GPU types and regions with free and total counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			pools, err := client.GPUs(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(pools)
			}
			tw := table("TYPE", "REGION", "FREE", "TOTAL")
			for _, p := range pools {
				row(tw, p.Type, p.Region, p.Free, p.Total)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
