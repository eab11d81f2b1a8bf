package netpolicy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/devgpu/devgpu/sdk"
)

// The tests of this file check that a Manager's rules hold whatever it
// finds on the host: a table of an earlier run, a second server, a table
// emptied under it.

// testConfig is a Manager's config with a bridge name and a subnet of the
// test's own, its state under dir.
func testConfig(t *testing.T, dir string, avoid ...netip.Prefix) Config {
	t.Helper()
	suffix := fmt.Sprintf("%04x", rand.IntN(1<<16))
	subnet := freeSubnet(t, func() netip.Prefix {
		for {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + rand.IntN(100)), byte(rand.IntN(256)), 0}), 24)
			if !overlapsAny(p, avoid) {
				return p
			}
		}
	})
	return Config{Bridge: "dgt" + suffix, Subnet: subnet, RuntimeDir: filepath.Join(dir, "netns-"+suffix)}
}

func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	for _, q := range ps {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// testManager makes a Manager for cfg and removes everything it made when
// the test ends.
func testManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	needNet(t, m)
	t.Cleanup(func() {
		if err := m.Cleanup(context.Background()); err != nil {
			t.Errorf("cleanup of %s: %v", cfg.Bridge, err)
		}
	})
	return m
}

// startManager makes and starts a Manager for cfg, as a server does when
// it starts (again) on cfg.
func startManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustSetup(t *testing.T, m *Manager, id string, e sdk.Egress) string {
	t.Helper()
	p, err := m.Setup(context.Background(), id, e)
	if err != nil {
		t.Fatalf("setup %s: %v", id, err)
	}
	return p
}

// outside is the test's internet: a namespace with a listed and an
// unlisted service, and a route back to the sessions' subnets.
type outside struct {
	listed, unlisted string // host:port
	hostIP           netip.Addr
}

func newOutside(t *testing.T, dir string) outside {
	t.Helper()
	suffix := fmt.Sprintf("%04x", rand.IntN(1<<16))
	ns, ip, hostIP := internet(t, filepath.Join(dir, "inet-"+suffix), suffix)
	// A route back to every session, so that what the rules let through
	// is answered with or without masquerading: a missing rule shows as
	// a reachable service, not as a missing NAT.
	err := inNS(ns, func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("10.0.0.0/8")), Gw: net.IP(hostIP.AsSlice())})
	})
	if err != nil {
		t.Fatal(err)
	}
	return outside{
		listed:   serve(t, ns, netip.AddrPortFrom(ip, 8081).String()),
		unlisted: serve(t, ns, netip.AddrPortFrom(ip, 8082).String()),
		hostIP:   hostIP,
	}
}

func (o outside) allowList() sdk.Egress {
	return sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{o.listed}}
}

// A server restarted with another bridge and subnet finds the table and
// bridge of its earlier run; its new sessions must be filtered all the
// same (the earlier version kept one table "devgpu" and, finding it built,
// never added rules for the new bridge: its sessions went unfiltered).
func TestRestartWithOtherBridge(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	out := newOutside(t, dir)
	cfgA := testConfig(t, dir)
	cfgA.RuntimeDir = filepath.Join(dir, "netns")
	a := testManager(t, cfgA)
	ctx := context.Background()
	mustSetup(t, a, "earlier", out.allowList())
	if err := a.Teardown(ctx, "earlier"); err != nil {
		t.Fatal(err)
	}
	a.Close() // the earlier run stops; its table and bridge stay

	cfgB := testConfig(t, dir, cfgA.Subnet)
	cfgB.RuntimeDir = cfgA.RuntimeDir // the same state directory
	b := testManager(t, cfgB)
	nsAllow := mustSetup(t, b, "s-allow", out.allowList())
	nsAll := mustSetup(t, b, "s-all", sdk.Egress{Mode: sdk.EgressAll})
	peer := serve(t, nsAll, netip.AddrPortFrom(sessionAddr(t, b, "s-all"), 9000).String())

	reach(t, "new bridge, allow-list: listed", nsAllow, out.listed)
	noReach(t, "new bridge, allow-list: unlisted", nsAllow, out.unlisted)
	noReach(t, "new bridge, allow-list: peer session", nsAllow, peer)
	out.reachMasqueraded(t, "new bridge, all: outside", nsAll, out.unlisted)
}

// reachMasqueraded checks that the session at path reaches addr outside,
// seen from the host's address: the new subnet is masqueraded.
func (o outside) reachMasqueraded(t *testing.T, what, path, addr string) {
	t.Helper()
	seen := reach(t, what, path, addr)
	if ap, err := netip.ParseAddrPort(seen); err != nil || ap.Addr() != o.hostIP {
		t.Errorf("%s: outside saw %q, want the masqueraded host address %s", what, seen, o.hostIP)
	}
}

// Two servers on one host, each with its own bridge, subnet and state:
// each one's sessions are filtered, and neither's cleanup removes the
// other's rules.
func TestTwoServersOneHost(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	out := newOutside(t, dir)
	cfgA := testConfig(t, dir)
	cfgB := testConfig(t, dir, cfgA.Subnet)
	a := testManager(t, cfgA)
	b := testManager(t, cfgB)
	ctx := context.Background()

	aAllow := mustSetup(t, a, "a-allow", out.allowList())
	bAllow := mustSetup(t, b, "b-allow", out.allowList())
	aAll := mustSetup(t, a, "a-all", sdk.Egress{Mode: sdk.EgressAll})
	bAll := mustSetup(t, b, "b-all", sdk.Egress{Mode: sdk.EgressAll})
	bPeer := serve(t, bAll, netip.AddrPortFrom(sessionAddr(t, b, "b-all"), 9000).String())
	aPeer := serve(t, aAll, netip.AddrPortFrom(sessionAddr(t, a, "a-all"), 9000).String())

	check := func(when string) {
		t.Helper()
		reach(t, when+": B allow-list: listed", bAllow, out.listed)
		noReach(t, when+": B allow-list: unlisted", bAllow, out.unlisted)
		out.reachMasqueraded(t, when+": B all: outside", bAll, out.unlisted)
	}
	reach(t, "A allow-list: listed", aAllow, out.listed)
	noReach(t, "A allow-list: unlisted", aAllow, out.unlisted)
	out.reachMasqueraded(t, "A all: outside", aAll, out.unlisted)
	noReach(t, "A all: a session of server B", aAll, bPeer)
	noReach(t, "B all: a session of server A", bAll, aPeer)
	check("both running")

	if err := a.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	check("after A's cleanup")
}

// A table of this Manager's name that an earlier run left with its chains
// but without rules must not pass for built: Start replaces it, and a
// table emptied while the server runs is rebuilt at the next Setup.
func TestStaleTableIsReplaced(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	out := newOutside(t, dir)
	cfg := testConfig(t, dir)
	m := testManager(t, cfg)
	stale := func() {
		t.Helper()
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tb := m.table()
		c.AddTable(tb)
		c.FlushTable(tb)
		accept := nftables.ChainPolicyAccept
		for _, ch := range []*nftables.Chain{
			{Name: chainForward, Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept},
			{Name: chainInput, Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept},
			{Name: chainSessFwd, Table: tb},
			{Name: chainSessIn, Table: tb},
		} {
			c.AddChain(ch)
		}
		if err := c.Flush(); err != nil {
			t.Fatalf("making a stale table: %v", err)
		}
	}
	stale()
	s1 := mustSetup(t, m, "s1", out.allowList())
	reach(t, "stale table at start: listed", s1, out.listed)
	noReach(t, "stale table at start: unlisted", s1, out.unlisted)

	// Emptied while running: the next Setup rebuilds the table, the
	// rules of the session already there included.
	stale()
	s2 := mustSetup(t, m, "s2", out.allowList())
	noReach(t, "table emptied while running: new session, unlisted", s2, out.unlisted)
	noReach(t, "table emptied while running: earlier session, unlisted", s1, out.unlisted)
	reach(t, "table emptied while running: earlier session, listed", s1, out.listed)

	// A restart (same bridge, sessions alive) rebuilds every session's
	// rules from the state file, whatever the table holds by then.
	m.Close()
	stale()
	m2 := startManager(t, cfg)
	noReach(t, "restarted: earlier session, unlisted", s1, out.unlisted)
	reach(t, "restarted: earlier session, listed", s2, out.listed)
	m2.Close()
}

// One bridge, one Manager: a second server configured with a bridge (or
// a subnet) already in use is refused with an error saying so, rather
// than rebuilding the other's table under it.
func TestBridgeAndSubnetInUse(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	cfg := testConfig(t, dir)
	a := testManager(t, cfg)
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.RuntimeDir = filepath.Join(dir, "other")
	b, err := New(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "in use by another devgpu server") {
		t.Fatalf("second Manager on bridge %s: Start = %v, want an in-use error", cfg.Bridge, err)
	}
	if _, err := b.Setup(context.Background(), "x", sdk.Egress{Mode: sdk.EgressAll}); err == nil {
		t.Fatal("second Manager on the same bridge set a session up")
	}
	if err := b.Cleanup(context.Background()); err == nil {
		t.Fatal("second Manager on the same bridge cleaned it up")
	}

	mustSetup(t, a, "s", sdk.Egress{Mode: sdk.EgressAll}) // the bridge now holds the subnet
	sameNet := testConfig(t, dir)
	sameNet.Subnet = cfg.Subnet
	c := testManager(t, sameNet)
	if _, err := c.Setup(context.Background(), "y", sdk.Egress{Mode: sdk.EgressAll}); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("Manager with a subnet in use: Setup = %v, want an overlap error", err)
	}
}

// sessionAddr is the address m gave the session.
func sessionAddr(t *testing.T, m *Manager, id string) netip.Addr {
	t.Helper()
	for _, s := range m.List() {
		if s.ID == id {
			return s.Addr
		}
	}
	t.Fatalf("no session %s", id)
	return netip.Addr{}
}

// needRoot skips unless the test runs as root; under CI it fails instead.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("netpolicy tests need root, CAP_NET_ADMIN and nftables: not root")
	}
	t.Skip("netpolicy tests need root, CAP_NET_ADMIN and nftables: not root")
}

// An upgrade: the older versions' shared table ("inet devgpu"), built for
// this bridge, drops all traffic from the bridge that its own dispatch
// rules do not know, the new sessions' included; Start removes it. One
// built for another bridge is not this server's and stays.
func TestLegacyTableOfThisBridgeIsRemoved(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	out := newOutside(t, dir)
	cfg := testConfig(t, dir)
	saved := legacyTableName
	legacyTableName = "devgpu_legacy_" + cfg.Bridge
	t.Cleanup(func() { legacyTableName = saved })
	legacy := &nftables.Table{Family: nftables.TableFamilyINet, Name: legacyTableName}
	exists := func() bool {
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tb, err := c.ListTableOfFamily(legacy.Name, legacy.Family)
		return err == nil && tb != nil
	}
	mk := func(bridge string) {
		t.Helper()
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		c.AddTable(legacy)
		accept := nftables.ChainPolicyAccept
		fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: legacy, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: legacy, Chain: fwd, Exprs: append(ifname(expr.MetaKeyIIFNAME, bridge), verdict(expr.VerdictDrop, "")...)})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if c, err := nftables.New(); err == nil && exists() {
			c.DelTable(legacy)
			c.Flush()
		}
	})
	mk(cfg.Bridge)
	m := testManager(t, cfg)
	s := mustSetup(t, m, "s", sdk.Egress{Mode: sdk.EgressAll})
	out.reachMasqueraded(t, "after an upgrade: all: outside", s, out.unlisted)
	if exists() {
		t.Errorf("legacy table of bridge %s still there", cfg.Bridge)
	}

	mk("dgother0")
	m.Close()
	m2 := startManager(t, cfg)
	m2.Close()
	if !exists() {
		t.Error("legacy table of another bridge removed")
	}
}
