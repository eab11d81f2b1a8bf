package e2e

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/devgpu/devgpu/internal/netpolicy"
	"github.com/devgpu/devgpu/internal/testutil"
)

// Egress all on the real server: a session reaches a service outside the
// host, but no service of the host itself, neither on the bridge's gateway
// nor on another host address, until the organisation opens it with
// `admin org update --allow-host-access`.
func TestOCIEgressKeepsHostClosed(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t)
	e.admin("project", "update", "default", "--egress", "all")
	outsideIP, hostIP := outsideNamespace(t)
	// One host service on every host address: the gateway and hostIP.
	hostPort := serveTCP(t, "0.0.0.0:0", "host-service")

	probe := func() string {
		t.Helper()
		// busybox: the gateway from the default route, then one nc each, at
		// once. A dropped connection shows only as silence until nc's
		// deadline (the shared short wait), which the three share.
		script := fmt.Sprintf(`set -- $(ip route | grep default); gw=$3
for a in %s:8080 $gw:%d %s:%d; do (echo "$a $(nc -w %d ${a%%:*} ${a##*:} </dev/null)") & done; wait`,
			outsideIP, hostPort, hostIP, hostPort, int(testutil.WaitShort.Seconds()))
		r := e.cli("run", "--", script)
		if r.code != 0 {
			t.Fatalf("run: %+v", r)
		}
		return r.stdout
	}
	// reached reads probe's output: which of the three answered.
	reached := func(out string) map[string]bool {
		t.Helper()
		got := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			host, _, err := net.SplitHostPort(f[0])
			what := "gateway"
			switch {
			case err != nil || host == "":
				t.Fatalf("probe output %q: no address (no default route?)", line)
			case host == outsideIP:
				what = "outside"
			case host == hostIP:
				what = "host address"
			}
			got[what] = len(f) > 1
		}
		if len(got) != 3 {
			t.Fatalf("probe output %q, want one line each for outside, gateway and host address", out)
		}
		return got
	}
	want := func(out string, want map[string]bool) {
		t.Helper()
		if got := reached(out); !maps.Equal(got, want) {
			t.Errorf("reached %v, want %v; output:\n%s", got, want, out)
		}
	}

	want(probe(), map[string]bool{"outside": true, "gateway": false, "host address": false})
	e.admin("org", "update", "--allow-host-access", "0.0.0.0/0:"+strconv.Itoa(hostPort))
	want(probe(), map[string]bool{"outside": true, "gateway": true, "host address": true})
}

// outsideNamespace makes the test's "internet": a network namespace linked
// to the host by a veth (addresses in 10.255.0.0/16), routing back to
// 10.0.0.0/8 through the host, with a service on port 8080 that answers
// "outside". It returns the service's address and the host end's, a host
// address.
func outsideNamespace(t *testing.T) (outsideIP, hostIP string) {
	t.Helper()
	n := rand.IntN(1 << 14)
	host := [4]byte{10, 255, byte(n >> 6), byte(n&63)<<2 | 1}
	peer := host
	peer[3]++
	hostIP, outsideIP = net.IP(host[:]).String(), net.IP(peer[:]).String()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// A thread of its own moves into a new namespace, listens there and
	// is thrown away (never unlocked); the listener stays in the namespace.
	type made struct {
		ns  netns.NsHandle
		err error
	}
	madec := make(chan made, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.New()
		if err == nil {
			_, err = serveTCPErr(t, "0.0.0.0:8080", "outside")
		}
		madec <- made{ns, err}
	}()
	m := <-madec
	must(m.err)
	ns := m.ns
	t.Cleanup(func() { ns.Close() })
	name := fmt.Sprintf("dgo%d", n)
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}
	must(netlink.LinkAdd(link))
	t.Cleanup(func() { _ = netlink.LinkDel(link) })
	h, err := netlink.NewHandleAt(ns)
	must(err)
	defer h.Close()
	hl, err := netlink.LinkByName(name)
	must(err)
	must(netlink.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(host[:]), Mask: net.CIDRMask(30, 32)}}))
	must(netlink.LinkSetUp(hl))
	eth, err := h.LinkByName("eth0")
	must(err)
	must(h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(peer[:]), Mask: net.CIDRMask(30, 32)}}))
	must(h.LinkSetUp(eth))
	lo, err := h.LinkByName("lo")
	must(err)
	must(h.LinkSetUp(lo))
	must(h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.CIDRMask(8, 32)}, Gw: net.IP(host[:])}))
	return outsideIP, hostIP
}

// serveTCP listens on addr and answers every connection with reply.
func serveTCP(t *testing.T, addr, reply string) int {
	t.Helper()
	port, err := serveTCPErr(t, addr, reply)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func serveTCPErr(t *testing.T, addr, reply string) (int, error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return 0, err
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, reply)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// deleteBridgeTable removes the nftables table a server keeps for its
// bridge: like the bridge, a stopped server leaves it for its next start.
func deleteBridgeTable(bridge string) {
	c, err := nftables.New()
	if err != nil {
		return
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: netpolicy.TableName(bridge)})
	_ = c.Flush()
}
