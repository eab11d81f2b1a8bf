//go:build linux

package cli

import (
	"os"
	"strings"
	"testing"
)

// Replicas sharing PostgreSQL relay to one another at the advertised URL:
// the server refuses, before it opens anything, a URL that would make the
// others dial themselves or send agents' secrets over plain http off the
// host. Loopback http stays (the replica fault tests run that way), and a
// SQLite store, which no replica shares, is not checked.
func TestServerRefusesUnusableAdvertiseURL(t *testing.T) {
	const pg = "postgres://devgpu@127.0.0.1:1/devgpu"
	for _, c := range []struct {
		name, store, listen, advertise string
		insecureHTTP                   bool
		refusal                        string // "": accepted
	}{
		{"unspecified IPv4 listen", pg, "0.0.0.0:8470", "", false, "give --advertise-url"},
		{"unspecified IPv6 listen", pg, "[::]:8470", "", false, "give --advertise-url"},
		{"listen without a host", pg, ":8470", "", false, "give --advertise-url"},
		{"plain http advertised off the host", pg, ":8470", "http://10.0.0.7:8470", false, "plain http on a non-loopback host"},
		{"plain http by name", pg, "0.0.0.0:8470", "http://devgpu-1.internal:8470", false, "plain http on a non-loopback host"},
		{"default URL would be plain http off the host", pg, "10.0.0.7:8470", "", true, "would advertise a plain http:// URL"},
		{"not a URL", pg, ":8470", "10.0.0.7:8470", false, "is not an https:// URL with a host"},
		{"https advertised", pg, "0.0.0.0:8470", "https://10.0.0.7:8470", false, ""},
		{"loopback http, as the fault tests run", pg, "127.0.0.1:0", "http://127.0.0.1:41234", false, ""},
		{"localhost http", pg, "localhost:8470", "http://localhost:8470", false, ""},
		{"specific listen address, https by default", pg, "10.0.0.7:8470", "", false, ""},
		{"loopback listen, plain http by default", pg, "127.0.0.1:8470", "", true, ""},
		{"SQLite serves one server", "", "0.0.0.0:8470", "", true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := serverOptions{storeURL: c.store, listen: c.listen}
			o.replica.advertiseURL = c.advertise
			o.front.insecureHTTP = c.insecureHTTP
			err := o.checkAdvertiseURL()
			switch {
			case c.refusal == "" && err != nil:
				t.Errorf("listen %s, advertise %q: refused (%v), want accepted", c.listen, c.advertise, err)
			case c.refusal != "" && (err == nil || !strings.Contains(err.Error(), c.refusal)):
				t.Errorf("listen %s, advertise %q: %v, want a refusal saying %q", c.listen, c.advertise, err, c.refusal)
			}
		})
	}
}

// The command refuses it before it touches the data directory (no pid
// file), so a misconfigured replica changes nothing.
func TestServerCommandRefusesUnspecifiedListenWithoutAdvertiseURL(t *testing.T) {
	data := t.TempDir()
	cmd := newServerCmd()
	cmd.SetArgs([]string{"--store", "postgres://devgpu@127.0.0.1:1/devgpu", "--listen", "0.0.0.0:0", "--data", data})
	cmd.SetOut(new(discard))
	cmd.SetErr(new(discard))
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "give --advertise-url") {
		t.Fatalf("server --listen 0.0.0.0:0 on PostgreSQL without --advertise-url: %v, want a refusal naming --advertise-url", err)
	}
	if entries, _ := os.ReadDir(data); len(entries) != 0 {
		t.Errorf("the refused server wrote %d entries into its data directory, want none", len(entries))
	}
}
