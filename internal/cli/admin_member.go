package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Project roles.
const (
	roleDeveloper = "developer"
	roleAdmin     = "admin"
)

func newAdminMemberCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "member", Short: "Add, remove and list the members of a project"}

	var role string
	add := &cobra.Command{
		Use:   "add PROJECT USER",
		Short: "Add a user to a project, or change their role in it",
		Long: `Add a user to a project, or change their role in it.
Developers use GPU sessions in the project and see only their own; project
admins also change the project's settings and members.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if role != roleDeveloper && role != roleAdmin {
				return fmt.Errorf("--role %q is not a project role; use developer or admin", role)
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			m, err := client.SetMember(cmd.Context(), args[0], args[1], role)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%s is in project %s as %s\n", m.User, args[0], m.Role)
			return nil
		},
	}
	add.Flags().StringVar(&role, "role", roleDeveloper, "developer or admin")

	remove := &cobra.Command{
		Use:   "remove PROJECT USER",
		Short: "Remove a user from a project",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			if err := client.RemoveMember(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%s removed from project %s\n", args[1], args[0])
			return nil
		},
	}

	var asJSON bool
	list := &cobra.Command{
		Use:   "list PROJECT",
		Short: "List a project's members and their roles",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			members, err := client.Members(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(members)
			}
			tw := table("USER", "ROLE", "SOURCE")
			for _, m := range members {
				source := "by hand"
				if m.Source == "group" {
					source = "from group"
				}
				row(tw, m.User, m.Role, source)
			}
			return tw.Flush()
		},
	}
	jsonFlag(list, &asJSON)

	cmd.AddCommand(add, remove, list)
	return cmd
}
