package cli

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/devgpu/devgpu/sdk"
)

// providerTimeout bounds each request to the identity provider.
const providerTimeout = 30 * time.Second

func newLoginCmd() *cobra.Command {
	var token, caFile string
	var device, noBrowser bool
	cmd := &cobra.Command{
		Use:   "login URL",
		Short: "Log in to a server with single sign-on or an API token",
		Long: `Log in to a devgpu server and save the credential in the CLI config
(mode 0600), one per server; the server last logged in to is the current one.

When the server is set up for single sign-on, login opens your browser at
your organisation's identity provider (or prints the URL to open, on this
machine, when no browser opens) and waits for it to come back on a loopback
address. Over SSH without a display (unless --no-browser), or with
--device, it prints a code to enter on any device instead. The credential lasts hours and is renewed
silently; ` + "`devgpu logout`" + ` ends it.

With --token, or on a server without single sign-on, login saves an API
token (typed without echo when not given, or read from stdin): for
automation, or where your administrator gave you one.
With --ca-file (or DEVGPU_CA_FILE), the server's certificate is verified
against that CA instead of the system's: for a server with a self-signed
or private certificate, such as ` + "`devgpu server --dev`" + `'s.`,
		Example: `  devgpu login https://devgpu.example.com
  devgpu login https://devgpu.example.com --device
  devgpu login https://devgpu.example.com --token "$DEVGPU_CI_TOKEN"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, _, _ := readConfigFile() // a broken file is replaced
			if caFile == "" {
				caFile = os.Getenv("DEVGPU_CA_FILE")
			}
			if caFile == "" {
				caFile = file.Credentials[serverKey(args[0])].CAFile
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
			ctx := cmd.Context()
			if token == "" {
				ac, err := client.AuthConfig(ctx)
				switch {
				case sdk.IsStatus(err, http.StatusNotFound): // a server from before single sign-on
				case err != nil:
					return fmt.Errorf("login failed: %w", err)
				case ac.OIDC != nil:
					if device && noBrowser {
						return fmt.Errorf("--device and --no-browser do not go together; --device never opens a browser")
					}
					l := &oidcLogin{
						provider: *ac.OIDC, http: &http.Client{Timeout: providerTimeout}, stderr: os.Stderr,
						device: device, noBrowser: noBrowser, open: openBrowser, getenv: os.Getenv,
					}
					return loginSSO(ctx, client, l, file, caFile)
				}
				if device || noBrowser {
					return fmt.Errorf("%s has no single sign-on; log in with an API token (`devgpu login %s --token TOKEN`)", client.URL, client.URL)
				}
				if token, err = promptToken(); err != nil {
					return err
				}
				client.Token = token
			}
			return loginToken(ctx, client, file, caFile)
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "log in with this API token instead of single sign-on (an administrator gives it to you)")
	cmd.Flags().BoolVar(&device, "device", false, "single sign-on with a code to enter on another device (for a machine without a browser, e.g. over SSH)")
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "single sign-on: print the URL to open instead of opening a browser")
	cmd.Flags().StringVar(&caFile, "ca-file", "", "PEM file of the CA that signed the server's certificate, when no system CA did (env DEVGPU_CA_FILE)")
	return cmd
}

// loginToken checks an API token and saves it as the server's credential.
func loginToken(ctx context.Context, client *sdk.Client, file config, caFile string) error {
	me, err := client.Whoami(ctx)
	if err != nil {
		return fmt.Errorf("login failed: %w", err)
	}
	path, err := saveLogin(file, client.URL.String(), credential{Method: methodToken, Token: client.Token, User: me.User, CAFile: caFile})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "Logged in to %s as %s (config: %s)\n", client.URL, me.User, path)
	return nil
}

// loginSSO runs the single sign-on flow l, hands the provider's tokens to
// the server and saves the credential it answers.
func loginSSO(ctx context.Context, client *sdk.Client, l *oidcLogin, file config, caFile string) error {
	if err := checkSSOServerURL(client.URL); err != nil {
		return err
	}
	req, err := l.run(ctx)
	if err != nil {
		return err
	}
	cred, err := client.LoginOIDC(ctx, req)
	if err != nil {
		return fmt.Errorf("login failed: %w", err)
	}
	exp := cred.ExpiresAt
	path, err := saveLogin(file, client.URL.String(), credential{
		Method: methodSSO, Token: cred.Token, User: cred.User, ExpiresAt: &exp,
		RefreshToken: cred.RefreshToken, Flow: req.Flow, CAFile: caFile,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(l.stderr, "Logged in to %s as %s with single sign-on until %s, renewed automatically (config: %s)\n",
		client.URL, cred.User, exp.Local().Format("15:04 MST"), path)
	return nil
}

// saveLogin makes url the current server with cr as its credential. The
// config is read again under its lock, so that a renewal another devgpu
// saved meanwhile is kept; file (what login read) is used when the file
// cannot be read: a broken file is replaced.
func saveLogin(file config, url string, cr credential) (string, error) {
	unlock, err := lockConfig(context.Background(), saveTimeout)
	if err != nil {
		return "", err
	}
	defer unlock()
	if fresh, _, err := readConfigFile(); err == nil {
		file = fresh
	}
	file.URL, file.CAFile = url, cr.CAFile
	file.setCredential(url, cr)
	return saveConfig(file)
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
