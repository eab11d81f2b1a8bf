package cli

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/devgpu/devgpu/sdk"
)

func newLoginCmd() *cobra.Command {
	var token string
	cmd := &cobra.Command{
		Use:   "login URL",
		Short: "Save the server URL and your API token",
		Long: `Save the server URL and your API token in the CLI config.
Without --token, the token is read from the terminal without echo (or from stdin).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				var err error
				if token, err = promptToken(); err != nil {
					return err
				}
			}
			client, err := sdk.NewClient(args[0], token)
			if err != nil {
				return err
			}
			me, err := client.Whoami(cmd.Context())
			if err != nil {
				return fmt.Errorf("login failed: %w", err)
			}
			c, _ := loadConfig()
			c.URL, c.Token = client.URL.String(), token
			path, err := saveConfig(c)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "Logged in to %s as %s (config: %s)\n", c.URL, me.User, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "API token (an administrator gives it to you)")
	return cmd
}

func promptToken() (string, error) {
	if term.IsTerminal(int(os.Stdin.Fd())) {
		fmt.Fprint(os.Stderr, "API token: ")
		b, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", fmt.Errorf("read token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if t := strings.TrimSpace(line); t != "" {
		return t, nil
	}
	return "", fmt.Errorf("no token given; pass --token TOKEN or type it when asked")
}
