//go:build linux

package cli

import (
	"errors"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// storeEnv holds the store URL when it carries a password: the
// environment and the config file are private to the server's user, a
// command line is not (ps, /proc/PID/cmdline).
const storeEnv = "DEVGPU_STORE_URL"

var errStorePassword = errors.New("--store must not hold a password, as every user of this host can read command lines; put the URL in the config file's store field or in $" + storeEnv)

// storeFromEnv refuses a --store holding a password and, when no --store
// was given, takes $DEVGPU_STORE_URL over the config file's store field.
func (o *serverOptions) storeFromEnv(cmd *cobra.Command) error {
	if cmd.Flags().Changed("store") {
		if hasPassword(o.storeURL) {
			return errStorePassword
		}
		return nil
	}
	if v := os.Getenv(storeEnv); v != "" {
		o.storeURL = v
	}
	return nil
}

// hasPassword reports whether a store URL (postgres://, or a key=value
// connection string) carries a password.
func hasPassword(s string) bool {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			return strings.Contains(s, "@") // unparseable: assume the worst
		}
		if _, set := u.User.Password(); set {
			return true
		}
		return u.Query().Has("password")
	}
	for _, field := range strings.Fields(s) {
		if k, _, ok := strings.Cut(field, "="); ok && strings.TrimSpace(k) == "password" {
			return true
		}
	}
	return false
}
