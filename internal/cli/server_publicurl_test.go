//go:build linux

package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// public_url comes from the config file, and --public-url wins over it.
func TestServerPublicURLFromConfig(t *testing.T) {
	config := filepath.Join(t.TempDir(), "server.json")
	if err := os.WriteFile(config, []byte(`{"public_url": "https://devgpu.example.com"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var o serverOptions
		cmd := &cobra.Command{}
		cmd.Flags().StringVar(&o.config, "config", "", "")
		cmd.Flags().StringVar(&o.publicURL, "public-url", "", "")
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		if err := o.loadConfig(cmd); err != nil {
			t.Fatal(err)
		}
		return o.publicURL
	}
	if got := run("--config", config); got != "https://devgpu.example.com" {
		t.Errorf("from the config file: %q", got)
	}
	if got := run("--config", config, "--public-url", "https://console.example.com"); got != "https://console.example.com" {
		t.Errorf("from --public-url: %q", got)
	}
}

// A public URL the console cannot be served at is refused, in one
// sentence naming public_url, before the server touches its data
// directory.
func TestServerRefusesUnusablePublicURL(t *testing.T) {
	for _, c := range []struct {
		name    string
		args    []string
		config  string
		refusal string
	}{
		{"plain http off the host", []string{"--public-url", "http://devgpu.example.com"}, "", "plain http on a host other than this machine's loopback"},
		{"a path", []string{"--public-url", "https://devgpu.example.com/console"}, "", "without a user, path, query or fragment"},
		{"no scheme, in the config", nil, `{"public_url": "devgpu.example.com"}`, "is not an https:// URL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			args := append([]string{"--listen", "127.0.0.1:0", "--data", data}, c.args...)
			if c.config != "" {
				config := filepath.Join(t.TempDir(), "server.json")
				if err := os.WriteFile(config, []byte(c.config), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", config)
			}
			cmd := newServerCmd()
			cmd.SetArgs(args)
			cmd.SetOut(new(discard))
			cmd.SetErr(new(discard))
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), c.refusal) || !strings.Contains(err.Error(), "public_url") {
				t.Fatalf("server %v: %v, want a refusal naming public_url and saying %q", c.args, err, c.refusal)
			}
			if entries, _ := os.ReadDir(data); len(entries) != 0 {
				t.Errorf("the refused server wrote %d entries into its data directory, want none", len(entries))
			}
		})
	}
}
