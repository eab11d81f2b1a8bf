package netpolicy

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/sdk"
)

const metadataIP = "169.254.169.254"

// metadata stands up a cloud metadata service of the test's own: a
// namespace linked to the host by a veth, holding 169.254.169.254 on a
// dummy interface (or its loopback) with a listener on port 80. Only traffic that enters
// through bridge is routed there (a rule and a routing table of the
// test's own), so the host's own route to that address, if it has one,
// is untouched. It returns the listener's address.
func metadata(t *testing.T, dir, bridge string) string {
	t.Helper()
	p := freeSubnet(t, func() netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(250 + rand.IntN(5)), byte(rand.IntN(256)), 0}), 30)
	})
	nsIP := p.Addr().Next().Next()
	suffix := fmt.Sprintf("%04x", rand.IntN(1<<16))
	path := filepath.Join(dir, "metadata-"+suffix)
	h, host := linkedNetns(t, path, "dgm"+suffix, p)
	lo, _ := h.LinkByName("lo")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// On a dummy interface where the kernel has the driver, else on the
	// namespace's loopback: either way a local address of the namespace.
	meta := lo
	if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "meta0"}}); err == nil {
		meta, err = h.LinkByName("meta0")
		must(err)
	}
	md := netip.MustParsePrefix(metadataIP + "/32")
	must(h.AddrAdd(meta, &netlink.Addr{IPNet: ipNet(md)}))
	must(h.LinkSetUp(meta))

	table := 20000 + rand.IntN(10000)
	route := &netlink.Route{Dst: ipNet(md), Gw: net.IP(nsIP.AsSlice()), LinkIndex: host.Attrs().Index, Table: table}
	must(netlink.RouteAdd(route))
	t.Cleanup(func() { netlink.RouteDel(route) })
	rule := netlink.NewRule()
	rule.IifName = bridge
	rule.Dst = ipNet(md)
	rule.Table = table
	rule.Priority = table
	must(netlink.RuleAdd(rule))
	t.Cleanup(func() { netlink.RuleDel(rule) })
	return serve(t, path, metadataIP+":80")
}

// With egress all, a session reaches the outside world but nothing of the
// host itself: not a service on another host address, not one on the
// bridge's gateway address, not the link-local metadata service. Nor
// does a project's allow-list open them by naming them. (The earlier
// version let egress all reach all three, and an allow-list every host
// address it named.)
func TestEgressKeepsHostClosed(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	out := newOutside(t, dir)
	cfg := testConfig(t, dir)
	m := testManager(t, cfg)
	hostSvc := serve(t, "", netip.AddrPortFrom(out.hostIP, 0).String())
	nsAll := mustSetup(t, m, "s-all", sdk.Egress{Mode: sdk.EgressAll})
	gwSvc := serve(t, "", netip.AddrPortFrom(m.Gateway(), 0).String())
	md := metadata(t, dir, cfg.Bridge)
	nsAllow := mustSetup(t, m, "s-allow", sdk.Egress{Mode: sdk.EgressAllowList,
		Allow: []string{out.listed, hostSvc, gwSvc, md, "169.254.0.0/16"}})

	reach(t, "all: outside", nsAll, out.unlisted)
	noReach(t, "all: service on a host address", nsAll, hostSvc)
	noReach(t, "all: service on the gateway address", nsAll, gwSvc)
	noReach(t, "all: link-local metadata service", nsAll, md)

	published := publish(t, out.hostIP, netip.MustParseAddrPort(out.listed))
	noReach(t, "all: port published on a host address (DNAT)", nsAll, published)

	reach(t, "allow-list: listed outside service", nsAllow, out.listed)
	noReach(t, "allow-list: host service listed", nsAllow, hostSvc)
	noReach(t, "allow-list: gateway service listed", nsAllow, gwSvc)
	noReach(t, "allow-list: metadata service listed", nsAllow, md)
}

// publish forwards a port of the host address hostIP to target with a
// DNAT rule in a table of the test's own, as a container engine publishes
// a container's port on the host. It returns the published address.
func publish(t *testing.T, hostIP netip.Addr, target netip.AddrPort) string {
	t.Helper()
	port := uint16(20000 + rand.IntN(20000))
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: fmt.Sprintf("devgpu_test_publish_%d", port)}
	c.AddTable(tb)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tb, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	to := target.Addr().As4()
	toPort := make([]byte, 2)
	binary.BigEndian.PutUint16(toPort, target.Port())
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: slices.Concat(
		ipAddr(16, netip.PrefixFrom(hostIP, 32)), l4proto(unix.IPPROTO_TCP), dport(port),
		[]expr.Any{
			&expr.Immediate{Register: 1, Data: to[:]},
			&expr.Immediate{Register: 2, Data: toPort},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		})})
	if err := c.Flush(); err != nil {
		t.Fatalf("publishing %s:%d: %v", hostIP, port, err)
	}
	t.Cleanup(func() {
		c.DelTable(tb)
		c.Flush()
	})
	return netip.AddrPortFrom(hostIP, port).String()
}
