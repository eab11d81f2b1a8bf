package cli

import (
	"github.com/spf13/cobra"
)

func newAdminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Administer users, tokens, projects, members, the organisation policy and the audit log",
	}
	cmd.AddCommand(
		newAdminUserCmd(), newAdminTokenCmd(), newAdminProjectCmd(),
		newAdminMemberCmd(), newAdminOrgCmd(), newAdminAuditCmd(), newAdminImageCmd(), newAdminPoolCmd(),
	)
	return cmd
}

// jsonFlag adds the --json flag, stable output that only ever gains fields.
func jsonFlag(cmd *cobra.Command, v *bool) {
	cmd.Flags().BoolVar(v, "json", false, "print JSON")
}
