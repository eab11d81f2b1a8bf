//go:build linux

package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

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

// isPostgresURL reports whether the store is PostgreSQL, which several
// replicas may share; anything else is a SQLite file, which serves this
// server alone.
func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// replicaOptions are this server's place among the replicas sharing a
// PostgreSQL store: where the others reach it, and how leadership is kept.
type replicaOptions struct {
	advertiseURL string
	heartbeat    time.Duration // 0: server.DefaultHeartbeatInterval
	leaseTTL     time.Duration // 0: server.DefaultLeaseTTL
}

// replicaConfig is the config file's "replica" block. Durations are Go
// durations ("10s"); empty keeps the default.
type replicaConfig struct {
	// LeaseTTL is the leader lease's term: a leader that dies is replaced
	// within it (default 10s).
	LeaseTTL string `json:"lease_ttl"`
	// HeartbeatInterval is how often a replica says it is alive; one
	// silent for three of them is declared dead (default 2s).
	HeartbeatInterval string `json:"heartbeat_interval"`
}

func (r *replicaOptions) loadConfig(cmd *cobra.Command, c serverConfig) error {
	if c.AdvertiseURL != "" && !cmd.Flags().Changed("advertise-url") {
		r.advertiseURL = c.AdvertiseURL
	}
	if c.Replica == nil {
		return nil
	}
	for _, d := range []struct {
		name, val string
		dst       *time.Duration
	}{{"lease_ttl", c.Replica.LeaseTTL, &r.leaseTTL}, {"heartbeat_interval", c.Replica.HeartbeatInterval, &r.heartbeat}} {
		if d.val == "" {
			continue
		}
		v, err := time.ParseDuration(d.val)
		if err != nil || v <= 0 {
			return fmt.Errorf("replica.%s %q is not a positive duration; write it as Go does, e.g. \"10s\"", d.name, d.val)
		}
		*d.dst = v
	}
	if r.leaseTTL != 0 && r.leaseTTL < time.Second {
		return fmt.Errorf("replica.lease_ttl %s is shorter than a second; leadership would change hands on every hiccup, so give 1s or more (default 10s)", r.leaseTTL)
	}
	return nil
}
