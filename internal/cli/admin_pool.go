package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

func newAdminPoolCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Warm pools: ready sessions handed to the next shells"}
	var asJSON bool
	var p sdk.WarmPool
	set := &cobra.Command{
		Use:   "set PROJECT --gpu TYPE [--image I] --size N",
		Short: "Keep N ready sessions of a GPU type (and image) started in a project (--size 0 removes the pool)",
		Long: `Keep N sessions started ahead, handed to the next shells in the project that fit.
Ready sessions count against the project's GPU cap and the organisation's quota
from the moment they start, but are metered only once a shell claims them: an
unclaimed ready session costs the host its GPU and nobody a bill.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("size") || p.GPUType == "" {
				return fmt.Errorf("give the pool's --gpu TYPE and --size N (0 removes it)")
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			p.Project = args[0]
			out, err := client.SetWarmPool(cmd.Context(), p)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			fmt.Fprintf(os.Stderr, "warm pool %s/%s%s: %d ready sessions\n", out.Project, out.GPUType, imageSuffix(out.Image), out.Size)
			return nil
		},
	}
	set.Flags().StringVar(&p.GPUType, "gpu", "", "GPU type of the ready sessions, e.g. t4")
	set.Flags().StringVar(&p.Image, "image", "", "image of the ready sessions (default: the project's)")
	set.Flags().IntVar(&p.Size, "size", 0, "how many ready sessions to keep (0 removes the pool)")
	set.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the warm pools you administer, with how many sessions are ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			pools, err := client.WarmPools(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(pools)
			}
			tw := table("PROJECT", "GPU", "IMAGE", "SIZE", "READY")
			for _, p := range pools {
				row(tw, p.Project, p.GPUType, orDefault(p.Image, "(project default)"), p.Size, p.Ready)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(set, list)
	return cmd
}

func imageSuffix(image string) string {
	if image == "" {
		return ""
	}
	return "/" + image
}
