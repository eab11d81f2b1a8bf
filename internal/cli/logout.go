package cli

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

// logoutTimeout bounds telling the server to end a single sign-on.
const logoutTimeout = 15 * time.Second

func newLogoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "logout [URL]",
		Short: "End your single sign-on and forget the credential of a server",
		Long: `End your single sign-on to a server (the current one by default) and
remove its credential from the CLI config. The server is told to end the
sign-in; when it cannot be reached, the credential is removed here anyway
and stops working when it expires. An API token is only forgotten here: it
stays valid until revoked (` + "`devgpu admin token revoke`" + `).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file, path, err := readConfigFile()
			if err != nil {
				return err
			}
			url := file.URL
			if v := os.Getenv("DEVGPU_URL"); v != "" {
				url = v
			}
			if len(args) == 1 {
				url = args[0]
			}
			if url == "" {
				return fmt.Errorf("not logged in to any server (config: %s); nothing to log out of", path)
			}
			url = serverKey(url)
			cr, ok := file.Credentials[url]
			if !ok && url == serverKey(file.URL) && file.Token != "" {
				cr, ok = file.current(), true
			}
			if !ok {
				fmt.Fprintf(os.Stderr, "not logged in to %s; nothing to do\n", url)
				return nil
			}
			if cr.Method == methodSSO {
				endSSO(cmd.Context(), url, cr)
			}
			if err := saveCredential(url, nil); err != nil {
				return err
			}
			if cr.Method == methodSSO {
				fmt.Fprintf(os.Stderr, "Logged out of %s\n", url)
			} else {
				fmt.Fprintf(os.Stderr, "Forgot the API token for %s; it stays valid until an admin revokes it (`devgpu admin token revoke`)\n", url)
			}
			return nil
		},
	}
}

// endSSO asks the server to end a single sign-on, best effort.
func endSSO(ctx context.Context, url string, cr credential) {
	client, err := newSDKClient(url, cr.Token, cr.CAFile)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, logoutTimeout)
		defer cancel()
		err = client.Logout(ctx, cr.RefreshToken)
	}
	if err == nil || sdk.IsStatus(err, http.StatusUnauthorized) { // already ended
		return
	}
	until := "its expiry"
	if cr.ExpiresAt != nil {
		until = cr.ExpiresAt.Local().Format("15:04 MST")
	}
	fmt.Fprintf(os.Stderr, "devgpu: could not end the sign-in at %s (%s); the credential is removed from this machine anyway and stops working at %s\n", url, oneLine(err.Error()), until)
}
