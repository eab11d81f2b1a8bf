package netpolicy

import (
	"net/netip"
	"path/filepath"
	"testing"
)

func TestIPAMAllocatesPersistsAndSkipsLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	subnet := netip.MustParsePrefix("10.1.2.0/29") // .1 gateway, .2-.6 sessions, .7 broadcast
	a, err := loadIPAM(path, subnet, "br")
	if err != nil {
		t.Fatal(err)
	}
	take := func(a *ipam, id string) netip.Addr {
		t.Helper()
		ad, err := a.next()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		a.state.Sessions[id] = record{Addr: ad.String(), Name: id}
		a.state.Last = ad.String()
		if err := a.save(); err != nil {
			t.Fatal(err)
		}
		return ad
	}
	if got := take(a, "a"); got != netip.MustParseAddr("10.1.2.2") {
		t.Fatalf("first address %s, want 10.1.2.2", got)
	}
	take(a, "b")
	// A restarted control plane reads the file and goes on after .3.
	b, err := loadIPAM(path, subnet, "br")
	if err != nil {
		t.Fatal(err)
	}
	if got := take(b, "c"); got != netip.MustParseAddr("10.1.2.4") {
		t.Fatalf("after reload %s, want 10.1.2.4", got)
	}
	delete(b.state.Sessions, "a") // .2 released
	take(b, "d")                  // .5
	take(b, "e")                  // .6
	// Wraps around past the broadcast address to the released .2, never
	// to the live .3 or .4.
	if got := take(b, "f"); got != netip.MustParseAddr("10.1.2.2") {
		t.Fatalf("wrap-around gave %s, want 10.1.2.2", got)
	}
	if _, err := b.next(); err == nil {
		t.Fatal("full subnet gave an address")
	}
	// The same file under another subnet, with live sessions, is refused.
	if _, err := loadIPAM(path, netip.MustParsePrefix("10.9.0.0/24"), "br"); err == nil {
		t.Fatal("subnet change with live sessions accepted")
	}
	// So is the same file under another bridge: the sessions' veths are
	// on the old one, and their rules match it.
	if _, err := loadIPAM(path, subnet, "br2"); err == nil {
		t.Fatal("bridge change with live sessions accepted")
	}
}

func TestSplitDest(t *testing.T) {
	for _, c := range []struct {
		in   string
		host string
		port uint16
	}{
		{"10.0.0.0/8", "10.0.0.0/8", 0},
		{"10.0.0.0/8:443", "10.0.0.0/8", 443},
		{"1.2.3.4:53", "1.2.3.4", 53},
		{"pypi.org:443", "pypi.org", 443},
		{"pypi.org", "pypi.org", 0},
		{"[2001:db8::1]:443", "2001:db8::1", 443},
		{"2001:db8::/32", "2001:db8::/32", 0},
	} {
		h, p, err := splitDest(c.in)
		if err != nil || h != c.host || p != c.port {
			t.Errorf("splitDest(%q) = %q, %d, %v; want %q, %d", c.in, h, p, err, c.host, c.port)
		}
	}
	if _, _, err := splitDest("host:0"); err == nil {
		t.Error("port 0 accepted")
	}
}

func TestNames(t *testing.T) {
	if n := vethName("x"); len(n) > 15 {
		t.Errorf("veth name %q too long", n)
	}
	if nsName("sess-1") != "sess-1" || nsName("../etc") == "../etc" || nsName("ipam.json") == "ipam.json" {
		t.Error("nsName does not keep to safe names")
	}
}
