package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

func newAdminUserCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Create, list, update, disable and enable users"}

	var orgAdmin, createJSON bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user and print their first API token, shown only this once",
		Long: `Create a user and print their first API token, shown only this once.
The token alone goes to stdout (with --json, the user and the token); give it
to the user, who logs in with ` + "`devgpu login URL --token TOKEN`" + `.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, cfg, err := newClient()
			if err != nil {
				return err
			}
			u, err := client.CreateUser(cmd.Context(), sdk.UserCreate{Name: args[0], OrgAdmin: orgAdmin})
			if err != nil {
				return err
			}
			if createJSON {
				return printJSON(u)
			}
			fmt.Println(u.Token)
			role := "user"
			if u.OrgAdmin {
				role = "organisation admin"
			}
			fmt.Fprintf(os.Stderr, "%s %s created; the token above is shown only this once: they log in with `devgpu login %s --token TOKEN`\n", role, u.Name, cfg.URL)
			return nil
		},
	}
	create.Flags().BoolVar(&orgAdmin, "org-admin", false, "make the user an organisation admin")
	jsonFlag(create, &createJSON)

	var listJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			users, err := client.Users(cmd.Context())
			if err != nil {
				return err
			}
			if listJSON {
				return printJSON(users)
			}
			tw := table("NAME", "ORG-ADMIN", "STATUS", "SERVICE-ACCOUNT", "SSO", "CREATED")
			for _, u := range users {
				status := "active"
				if u.Disabled {
					status = "disabled"
				}
				row(tw, u.Name, yesNo(u.OrgAdmin), status, yesNo(u.ServiceAccount), yesNo(u.SSO), ago(&u.CreatedAt))
			}
			return tw.Flush()
		},
	}
	jsonFlag(list, &listJSON)

	setDisabled := func(disabled bool, use, short, done string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				client, _, err := newClient()
				if err != nil {
					return err
				}
				u, err := client.UpdateUser(cmd.Context(), args[0], sdk.UserUpdate{Disabled: &disabled})
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "user %s %s\n", u.Name, done)
				return nil
			},
		}
	}
	disable := setDisabled(true, "disable", "Disable a user: they cannot use devgpu until enabled again", "disabled")
	enable := setDisabled(false, "enable", "Enable a disabled user again", "enabled")

	var serviceAccount bool
	update := &cobra.Command{
		Use:   "update NAME",
		Short: "Change a user: whether they are a service account",
		Long: `Change a user. --service-account=true marks a robot that may keep using API
tokens when the organisation requires single sign-on for people
(` + "`devgpu admin org update --require-sso=true`" + `).`,
		Example: `  devgpu admin user update ci-bot --service-account=true`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("service-account") {
				return fmt.Errorf("nothing to change; give --service-account=true or --service-account=false")
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			u, err := client.UpdateUser(cmd.Context(), args[0], sdk.UserUpdate{ServiceAccount: &serviceAccount})
			if err != nil {
				return err
			}
			if u.ServiceAccount {
				fmt.Fprintf(os.Stderr, "user %s is a service account\n", u.Name)
			} else {
				fmt.Fprintf(os.Stderr, "user %s is not a service account\n", u.Name)
			}
			return nil
		},
	}
	update.Flags().BoolVar(&serviceAccount, "service-account", false, "a robot that may use API tokens where single sign-on is required for people")

	cmd.AddCommand(create, list, update, disable, enable)
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
