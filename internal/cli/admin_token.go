package cli

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

func newAdminTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke API tokens"}

	var (
		user, name, scope string
		expiresIn         time.Duration
		createJSON        bool
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an API token and print it, shown only this once",
		Long: `Create an API token for you, or (organisation admins) for --user, and print it.
The token alone goes to stdout (with --json, its description and the token); it
is shown only this once.

The new token is made with the token you are logged in with: it expires no later
than that one, has no wider --scope, and is revoked when that one is revoked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if expiresIn < 0 || (cmd.Flags().Changed("expires-in") && expiresIn == 0) {
				return fmt.Errorf("--expires-in %s is not a positive duration; give one such as 720h, or leave it out for a token that does not expire", expiresIn)
			}
			client, cfg, err := newClient()
			if err != nil {
				return err
			}
			t, err := client.CreateToken(cmd.Context(), sdk.TokenCreate{User: user, Name: name, ExpiresIn: sdk.Duration(expiresIn), Scope: scope})
			if err != nil {
				return err
			}
			if createJSON {
				return printJSON(t)
			}
			fmt.Println(t.Secret)
			expiry := "does not expire"
			if t.ExpiresAt != nil {
				expiry = "expires " + t.ExpiresAt.Local().Format(time.DateTime)
			}
			fmt.Fprintf(os.Stderr, "token %d for %s created (%s); the token above is shown only this once: log in with `devgpu login %s --token TOKEN`\n", t.ID, t.User, expiry, cfg.URL)
			return nil
		},
	}
	create.Flags().StringVar(&user, "user", "", "the user to create it for (organisation admins; default: you)")
	create.Flags().StringVar(&name, "name", "", "a name to tell it apart, e.g. laptop or ci")
	create.Flags().DurationVar(&expiresIn, "expires-in", 0, "how long it is valid, e.g. 720h (default: until revoked, or until the token you use expires)")
	create.Flags().StringVar(&scope, "scope", "", "full (all of the user's rights) or developer (no organisation-admin rights); default: as the token you use")
	jsonFlag(create, &createJSON)

	var listUser string
	var listJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List API tokens, yours or (organisation admins) --user's, without their secrets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			tokens, err := client.Tokens(cmd.Context(), listUser)
			if err != nil {
				return err
			}
			if listJSON {
				return printJSON(tokens)
			}
			now := time.Now()
			tw := table("ID", "USER", "NAME", "PREFIX", "SCOPE", "PARENT", "CREATED", "EXPIRES", "REVOKED")
			for _, t := range tokens {
				parent := "-"
				if t.ParentID != 0 {
					parent = strconv.FormatInt(t.ParentID, 10)
				}
				row(tw, t.ID, t.User, orDash(t.Name), t.Prefix, orDash(t.Scope), parent, ago(&t.CreatedAt), expires(t.ExpiresAt, now), ago(t.RevokedAt))
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&listUser, "user", "", "list this user's tokens (organisation admins; default: yours)")
	jsonFlag(list, &listJSON)

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API token and the tokens made with it; they stop working at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("token ID %q is not a number; `devgpu admin token list` shows the IDs", args[0])
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			t, err := client.RevokeToken(cmd.Context(), id)
			if err != nil {
				return err
			}
			label := ""
			if t.Name != "" {
				label = " (" + t.Name + ")"
			}
			fmt.Fprintf(os.Stderr, "token %d%s of %s revoked\n", t.ID, label, t.User)
			return nil
		},
	}

	cmd.AddCommand(create, list, revoke)
	return cmd
}

// expires renders a token's expiry relative to now: "never", "in 3d" or
// "2h ago".
func expires(at *time.Time, now time.Time) string {
	switch {
	case at == nil:
		return "never"
	case at.After(now):
		return "in " + roughly(at.Sub(now))
	default:
		return roughly(now.Sub(*at)) + " ago"
	}
}

// roughly renders a duration in its largest whole unit: 45s, 12m, 5h, 30d.
func roughly(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= 2*time.Minute:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
