//go:build linux

package cli

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
)

func TestHasPassword(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"postgres://devgpu:s3cret@db:5432/devgpu":                    true,
		"postgresql://devgpu:@db/devgpu":                             true,
		"postgres://devgpu@db/devgpu?sslmode=verify-full&password=x": true,
		"host=db user=devgpu password=s3cret dbname=devgpu":          true,
		"postgres://devgpu@db/devgpu?sslmode=verify-full":            false,
		"host=db user=devgpu dbname=devgpu":                          false,
		"/var/lib/devgpu/devgpu.db":                                  false,
		"":                                                           false,
	} {
		if got := hasPassword(s); got != want {
			t.Errorf("hasPassword(%q) = %t, want %t", s, got, want)
		}
	}
}

// A password on the command line is readable by every user of the host:
// the server refuses it before it opens anything, and says where it goes.
func TestServerRefusesStorePasswordInArgv(t *testing.T) {
	cmd := newServerCmd()
	cmd.SetArgs([]string{"--store", "postgres://devgpu:s3cret@127.0.0.1:1/devgpu", "--data", t.TempDir()})
	cmd.SetOut(new(discard))
	cmd.SetErr(new(discard))
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	if err := cmd.Execute(); !errors.Is(err, errStorePassword) {
		t.Fatalf("server --store with a password: %v, want %v", err, errStorePassword)
	}
}

// $DEVGPU_STORE_URL wins over the config file's store field, and --store
// (without a password) over both.
func TestStoreURLFromEnv(t *testing.T) {
	config := filepath.Join(t.TempDir(), "server.json")
	if err := os.WriteFile(config, []byte(`{"store": "postgres://devgpu:fromfile@db/devgpu"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(env string, args ...string) string {
		t.Helper()
		t.Setenv(storeEnv, env)
		var o serverOptions
		cmd := &cobra.Command{}
		cmd.Flags().StringVar(&o.config, "config", "", "")
		cmd.Flags().StringVar(&o.storeURL, "store", "", "")
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		if err := o.loadConfig(cmd); err != nil {
			t.Fatal(err)
		}
		if err := o.storeFromEnv(cmd); err != nil {
			t.Fatal(err)
		}
		return o.storeURL
	}
	if got := run("", "--config", config); got != "postgres://devgpu:fromfile@db/devgpu" {
		t.Errorf("from the config file: %q", got)
	}
	if got := run("postgres://devgpu:fromenv@db/devgpu", "--config", config); got != "postgres://devgpu:fromenv@db/devgpu" {
		t.Errorf("from the environment: %q", got)
	}
	if got := run("postgres://devgpu:fromenv@db/devgpu", "--config", config, "--store", "/tmp/x.db"); got != "/tmp/x.db" {
		t.Errorf("from --store: %q", got)
	}
}

type discard struct{}

func (*discard) Write(p []byte) (int, error) { return len(p), nil }
