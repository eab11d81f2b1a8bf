package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func newAdminImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "The image catalog: friendly names for images"}
	var asJSON bool
	add := &cobra.Command{
		Use:   "add NAME REF",
		Short: "Name an image reference (pin it with @sha256:... to fix its content)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			img, err := client.AddImage(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(img)
			}
			fmt.Fprintf(os.Stderr, "image %s is %s\n", img.Name, img.Ref)
			return nil
		},
	}
	add.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the catalog",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			images, err := client.Images(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(images)
			}
			tw := table("NAME", "REF")
			for _, img := range images {
				row(tw, img.Name, img.Ref)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a name from the catalog (running sessions keep their image)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			if err := client.RemoveImage(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "image %s removed from the catalog\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(add, list, remove)
	return cmd
}
