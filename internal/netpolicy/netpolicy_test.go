package netpolicy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/devgpu/devgpu/sdk"
)

// needNet skips unless the test can manage namespaces, links and nftables;
// under CI it fails instead.
func needNet(t *testing.T, m *Manager) {
	t.Helper()
	skip := func(why string) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("netpolicy tests need root, CAP_NET_ADMIN and nftables: %s", why)
		}
		t.Skipf("netpolicy tests need root, CAP_NET_ADMIN and nftables: %s", why)
	}
	if os.Geteuid() != 0 {
		skip("not root")
	}
	if err := m.Check(); err != nil {
		skip(err.Error())
	}
}

// inNS runs f on a thread inside the namespace at path.
func inNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		err = f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// serve listens on addr in the namespace at path (the host's when path is
// empty) and answers every connection with the peer's address.
func serve(t *testing.T, path, addr string) string {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) { ln, err = net.Listen("tcp4", addr); return err }
	var err error
	if path == "" {
		err = listen()
	} else {
		err = inNS(path, listen)
	}
	if err != nil {
		t.Fatalf("listen %s in %q: %v", addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, c.RemoteAddr().String())
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// dial connects from the namespace at path and returns the peer address
// the server saw.
func dial(path, addr string, timeout time.Duration) (string, error) {
	var seen string
	err := inNS(path, func() error {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		seen = strings.TrimSpace(line)
		return err
	})
	return seen, err
}

func reach(t *testing.T, what, path, addr string) string {
	t.Helper()
	// Long enough for a retransmitted SYN (1s), should the first be lost.
	start := time.Now()
	seen, err := dial(path, addr, 3*time.Second)
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Logf("%s: connecting to %s took %s (a lost first SYN)", what, addr, d)
	}
	if err != nil {
		t.Errorf("%s: %s unreachable: %v", what, addr, err)
	}
	return seen
}

func noReach(t *testing.T, what, path, addr string) {
	t.Helper()
	if _, err := dial(path, addr, 700*time.Millisecond); err == nil {
		t.Errorf("%s: %s reachable, want blocked", what, addr)
	}
}

// freeSubnet picks a random 10.x.y.0/24 (or 172.31.y.0/24-ish /30) that no
// route on the host overlaps.
func freeSubnet(t *testing.T, pick func() netip.Prefix) netip.Prefix {
	t.Helper()
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
next:
	for range 100 {
		p := pick()
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			rp, err := netip.ParsePrefix(r.Dst.String())
			if err == nil && rp.Bits() > 0 && rp.Overlaps(p) {
				continue next
			}
		}
		return p
	}
	t.Fatal("no free test subnet")
	return netip.Prefix{}
}

// internet is a namespace of the test's own, linked to the host by a veth:
// the outside world the sessions may or may not reach. It returns the
// namespace's path, its address and the host end's address.
func internet(t *testing.T, dir, suffix string) (string, netip.Addr, netip.Addr) {
	t.Helper()
	p := freeSubnet(t, func() netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + rand.IntN(50)), byte(rand.IntN(256)), 0}), 30)
	})
	hostIP, inetIP := p.Addr().Next(), p.Addr().Next().Next()
	path := filepath.Join(dir, "internet")
	linkedNetns(t, path, "dgi"+suffix, p)
	// No route back to the sessions: only masqueraded traffic can answer.
	return path, inetIP, hostIP
}

// linkedNetns makes a network namespace at path, removed when the test
// ends, linked to the host by a veth: the host end, named name, holds p's
// first address (p.Addr().Next()) and the namespace's eth0 its second,
// both up, as is the namespace's loopback. It returns a handle in the
// namespace, closed when the test ends, and the host end, removed then.
func linkedNetns(t *testing.T, path, name string, p netip.Prefix) (*netlink.Handle, netlink.Link) {
	t.Helper()
	hostIP, nsIP := p.Addr().Next(), p.Addr().Next().Next()
	if err := newNetns(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNetns(path) })
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}))
	host, err := netlink.LinkByName(name)
	must(err)
	t.Cleanup(func() { netlink.LinkDel(host) })
	must(netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(hostIP, p.Bits()))}))
	must(netlink.LinkSetUp(host))
	eth, err := h.LinkByName("eth0")
	must(err)
	must(h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(nsIP, p.Bits()))}))
	must(h.LinkSetUp(eth))
	lo, _ := h.LinkByName("lo")
	must(h.LinkSetUp(lo))
	return h, host
}

func TestEgressPolicies(t *testing.T) {
	dir := t.TempDir()
	suffix := fmt.Sprintf("%04x", rand.IntN(1<<16))
	subnet := freeSubnet(t, func() netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + rand.IntN(100)), byte(rand.IntN(256)), 0}), 24)
	})
	cfg := Config{
		Bridge:     "dgt" + suffix,
		Subnet:     subnet,
		RuntimeDir: filepath.Join(dir, "netns"),
	}
	probe, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	needNet(t, probe)
	probe.delTable() // Check created it; the real Manager builds it

	inetNS, inetIP, hostIP := internet(t, dir, suffix)
	inetAllowed := serve(t, inetNS, netip.AddrPortFrom(inetIP, 8081).String())
	inetOther := serve(t, inetNS, netip.AddrPortFrom(inetIP, 8082).String())
	api := serve(t, "", netip.AddrPortFrom(hostIP, 0).String())
	hostOther := serve(t, "", netip.AddrPortFrom(hostIP, 0).String())
	apiPort := netip.MustParseAddrPort(api).Port()

	cfg.APIPort = apiPort
	cfg.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
		if host == "internet.test" {
			return []netip.Addr{inetIP}, nil
		}
		return nil, errors.New("no such host")
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Cleanup(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	ctx := context.Background()
	setup := func(id string, e sdk.Egress) string {
		t.Helper()
		p, err := m.Setup(ctx, id, e)
		if err != nil {
			t.Fatalf("setup %s: %v", id, err)
		}
		return p
	}
	nsNone := setup("s-none", sdk.Egress{Mode: sdk.EgressNone})
	// Listing a host address does not open it: only the organisation's
	// host access does (host_test.go).
	nsAllow := setup("s-allow", sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"internet.test:8081", api, hostOther}})
	nsAll := setup("s-all", sdk.Egress{Mode: sdk.EgressAll})
	nsAll2 := setup("s-all2", sdk.Egress{Mode: sdk.EgressAll})

	if _, err := m.Setup(ctx, "s-all", sdk.Egress{Mode: sdk.EgressAll}); err == nil {
		t.Error("second Setup of a live session succeeded")
	}
	if _, err := m.Setup(ctx, "s-bad", sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"nowhere.test:1"}}); err == nil {
		t.Error("Setup with an unresolvable allow-list host succeeded")
	}
	if _, err := os.Stat(filepath.Join(cfg.RuntimeDir, "s-bad")); !os.IsNotExist(err) {
		t.Error("failed Setup left its namespace file behind")
	}

	addrOf := map[string]netip.Addr{}
	for _, s := range m.List() {
		addrOf[s.ID] = s.Addr
	}
	if addrOf["s-none"].IsValid() || !addrOf["s-all2"].IsValid() || len(addrOf) != 4 {
		t.Fatalf("List = %v", m.List())
	}
	peer := serve(t, nsAll2, netip.AddrPortFrom(addrOf["s-all2"], 9000).String())
	loNone := serve(t, nsNone, "127.0.0.1:0")
	gwAPI := netip.AddrPortFrom(m.Gateway(), apiPort).String()

	t.Run("none", func(t *testing.T) {
		reach(t, "none: own loopback", nsNone, loNone)
		noReach(t, "none: internet", nsNone, inetAllowed)
		noReach(t, "none: host", nsNone, hostOther)
		noReach(t, "none: peer session", nsNone, peer)
		var names []string
		inNS(nsNone, func() error {
			ifs, _ := net.Interfaces()
			for _, i := range ifs {
				names = append(names, i.Name)
			}
			return nil
		})
		if strings.Join(names, ",") != "lo" {
			t.Errorf("none: interfaces %v, want only lo", names)
		}
	})
	t.Run("allow-list", func(t *testing.T) {
		reach(t, "allow-list: listed host:port", nsAllow, inetAllowed)
		noReach(t, "allow-list: unlisted port", nsAllow, inetOther)
		noReach(t, "allow-list: host service listed", nsAllow, hostOther)
		noReach(t, "allow-list: API port listed", nsAllow, api)
		noReach(t, "allow-list: peer session", nsAllow, peer)
	})
	t.Run("all", func(t *testing.T) {
		seen := reach(t, "all: internet", nsAll, inetAllowed)
		if ap, err := netip.ParseAddrPort(seen); err != nil || ap.Addr() != hostIP {
			t.Errorf("all: internet saw %q, want the masqueraded host address %s", seen, hostIP)
		}
		reach(t, "all: internet, any port", nsAll, inetOther)
		noReach(t, "all: host service", nsAll, hostOther)
		noReach(t, "all: API port", nsAll, api)
		noReach(t, "all: API port via gateway", nsAll, gwAPI)
		noReach(t, "all: peer session", nsAll, peer)
		// The peer itself is fine: its listener answers on its own.
		reach(t, "all2: own listener", nsAll2, peer)
	})

	t.Run("teardown", func(t *testing.T) {
		rec := m.ipam.state.Sessions["s-all"]
		if err := m.Teardown(ctx, "s-all"); err != nil {
			t.Fatal(err)
		}
		if err := m.Teardown(ctx, "s-all"); err != nil {
			t.Fatalf("second teardown: %v", err)
		}
		if _, err := os.Stat(nsAll); !os.IsNotExist(err) {
			t.Errorf("namespace file %s still there", nsAll)
		}
		if _, err := netlink.LinkByName(rec.Veth); err == nil {
			t.Errorf("veth %s still there", rec.Veth)
		}
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tb := m.table()
		for _, suf := range []string{sessFwdSuffix, sessInSuffix} {
			if ch, err := c.ListChain(tb, chainName("s-all")+suf); err == nil && ch != nil {
				t.Errorf("chain %s still there", ch.Name)
			}
		}
		for _, ch := range []string{chainSessFwd, chainSessIn} {
			rules, _ := c.GetRules(tb, &nftables.Chain{Name: ch, Table: tb})
			for _, r := range rules {
				if string(r.UserData) == "s-all" {
					t.Errorf("dispatch rule in %s still there", ch)
				}
			}
		}
		// A restarted control plane sees the live sessions and does not
		// reuse their addresses.
		m.Close()
		m2, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(m2.List()); got != 3 {
			t.Errorf("restarted manager lists %d sessions, want 3", got)
		}
		p, err := m2.Setup(ctx, "s-new", sdk.Egress{Mode: sdk.EgressAll})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range m2.List() {
			if s.ID == "s-new" && (s.Addr == addrOf["s-allow"] || s.Addr == addrOf["s-all2"] || s.Addr == addrOf["s-all"]) {
				t.Errorf("new session got %s, an address of a live or just-released session", s.Addr)
			}
		}
		reach(t, "restarted: new session reaches internet", p, inetAllowed)
		noReach(t, "restarted: new session reaches peer", p, peer)
		if err := m2.Teardown(ctx, "s-new"); err != nil {
			t.Fatal(err)
		}
		m2.Close()
		// m still holds the old state; reload it so Cleanup sees it right.
		m.ipam, _ = loadIPAM(m.cfg.StateFile, cfg.Subnet, cfg.Bridge)
	})

	t.Run("cleanup", func(t *testing.T) {
		if err := m.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		c, _ := nftables.New()
		if tb, err := c.ListTableOfFamily(m.table().Name, nftables.TableFamilyINet); err == nil && tb != nil {
			t.Errorf("table %s still there", m.table().Name)
		}
		if _, err := netlink.LinkByName(cfg.Bridge); err == nil {
			t.Errorf("bridge %s still there", cfg.Bridge)
		}
		ents, _ := os.ReadDir(cfg.RuntimeDir)
		for _, e := range ents {
			t.Errorf("left in runtime dir: %s", e.Name())
		}
		links, _ := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "dg") && l.Attrs().Name != "dgi"+suffix && l.Type() == "veth" {
				if _, ok := map[string]bool{vethName("s-allow"): true, vethName("s-all2"): true, vethName("s-new"): true}[l.Attrs().Name]; ok {
					t.Errorf("veth %s left behind", l.Attrs().Name)
				}
			}
		}
	})
}
