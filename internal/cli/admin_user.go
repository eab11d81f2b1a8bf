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
				sso := yesNo(u.SSO)
				if u.SSOBindAllowed {
					sso = "next login binds"
				}
				row(tw, u.Name, yesNo(u.OrgAdmin), status, yesNo(u.ServiceAccount), sso, ago(&u.CreatedAt))
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

	var serviceAccount, bindSSO bool
	update := &cobra.Command{
		Use:   "update NAME",
		Short: "Change a user: whether they are a service account, whether single sign-on may bind them",
		Long: `Change a user. --service-account=true marks a robot that may keep using API
tokens when the organisation requires single sign-on for people
(` + "`devgpu admin org update --require-sso=true`" + `).

--bind-sso lets the next single sign-on under the user's name bind this user
(made by hand, e.g. the bootstrap admin) to that identity-provider account, with
the rights it has; without it such a login is refused, so that nobody takes over
a user by getting the provider to give their name. --bind-sso=false withdraws it
before it is used. A service account cannot log in with single sign-on.`,
		Example: `  devgpu admin user update ci-bot --service-account=true
  devgpu admin user update alice --bind-sso`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req sdk.UserUpdate
			if cmd.Flags().Changed("service-account") {
				req.ServiceAccount = &serviceAccount
			}
			if cmd.Flags().Changed("bind-sso") {
				req.BindSSO = &bindSSO
			}
			if req.ServiceAccount == nil && req.BindSSO == nil {
				return fmt.Errorf("nothing to change; give --service-account=true|false or --bind-sso")
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			u, err := client.UpdateUser(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if req.ServiceAccount != nil {
				if u.ServiceAccount {
					fmt.Fprintf(os.Stderr, "user %s is a service account\n", u.Name)
				} else {
					fmt.Fprintf(os.Stderr, "user %s is not a service account\n", u.Name)
				}
			}
			if req.BindSSO != nil {
				switch {
				case u.SSOBindAllowed:
					fmt.Fprintf(os.Stderr, "the next single sign-on as %s binds the user to that account\n", u.Name)
				default:
					fmt.Fprintf(os.Stderr, "single sign-on as %s is refused until allowed with --bind-sso\n", u.Name)
				}
			}
			return nil
		},
	}
	update.Flags().BoolVar(&serviceAccount, "service-account", false, "a robot that may use API tokens where single sign-on is required for people")
	update.Flags().BoolVar(&bindSSO, "bind-sso", false, "let the next single sign-on under this name bind the user to that account")

	cmd.AddCommand(create, list, update, disable, enable)
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
