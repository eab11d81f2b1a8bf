package cli

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func newLoginCmd() *cobra.Command {
	var token, caFile string
	cmd := &cobra.Command{
		Use:   "login URL",
		Short: "Save the server URL and your API token",
		Long: `Save the server URL and your API token in the CLI config.
Without --token, the token is read from the terminal without echo (or from stdin).
With --ca-file (or DEVGPU_CA_FILE), the server's certificate is verified
against that CA instead of the system's: for a server with a self-signed
or private certificate, such as ` + "`devgpu server --dev`" + `'s.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				var err error
				if token, err = promptToken(); err != nil {
					return err
				}
			}
			if caFile == "" {
				caFile = os.Getenv("DEVGPU_CA_FILE")
			}
			if caFile != "" {
				abs, err := filepath.Abs(caFile)
				if err != nil {
					return err
				}
				caFile = abs
			}
			client, err := newSDKClient(args[0], token, caFile)
			if err != nil {
				return err
			}
			me, err := client.Whoami(cmd.Context())
			if err != nil {
				return fmt.Errorf("login failed: %w", err)
			}
			c, _ := loadConfig()
			c.URL, c.Token, c.CAFile = client.URL.String(), token, caFile
			path, err := saveConfig(c)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "Logged in to %s as %s (config: %s)\n", c.URL, me.User, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "API token (an administrator gives it to you)")
	cmd.Flags().StringVar(&caFile, "ca-file", "", "PEM file of the CA that signed the server's certificate, when no system CA did (env DEVGPU_CA_FILE)")
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
