package netpolicy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/sdk"
)

const (
	modeNone  = sdk.EgressNone
	modeAllow = sdk.EgressAllowList
	modeAll   = sdk.EgressAll

	ipForwardPath = "/proc/sys/net/ipv4/ip_forward"
)

// Config says where the Manager puts sessions and what it protects.
type Config struct {
	// Bridge is the host bridge's name (default "devgpu0"); at most 15 bytes.
	Bridge string
	// Subnet holds the sessions' addresses (default 10.88.0.0/16); the
	// bridge gets its first address, the sessions the rest. IPv4, /29 or
	// larger.
	Subnet netip.Prefix
	// APIPort is the TCP port of the control plane's API on the host;
	// sessions cannot reach it on any host address unless an allow-list
	// names the port. 0 protects nothing.
	APIPort uint16
	// RuntimeDir holds the namespaces' bind mounts (default
	// /run/devgpu/netns).
	RuntimeDir string
	// StateFile records the sessions, their addresses and their rules
	// (default RuntimeDir/ipam.json).
	StateFile string
	// LookupHost resolves allow-list host names to addresses (default: the
	// system resolver, IPv4).
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Manager sets sessions' namespaces and rules up and tears them down. Its
// methods are safe for concurrent use; one host runs at most one Manager
// per bridge (Start enforces it), each with its own table.
type Manager struct {
	cfg Config

	mu          sync.Mutex
	ipam        *ipam
	setForward  bool // this Manager turned ip_forward on
	gatewayAddr netip.Addr
	lock        net.Listener // holds the bridge; nil until started
}

// New checks cfg, fills in its defaults and loads the address state. It
// changes nothing on the host.
func New(cfg Config) (*Manager, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = "devgpu0"
	}
	if len(cfg.Bridge) > 15 {
		return nil, fmt.Errorf("netpolicy: bridge name %q is longer than 15 bytes", cfg.Bridge)
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix("10.88.0.0/16")
	}
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 29 {
		return nil, fmt.Errorf("netpolicy: subnet %s must be IPv4 and /29 or larger", cfg.Subnet)
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if cfg.RuntimeDir == "" {
		cfg.RuntimeDir = "/run/devgpu/netns"
	}
	if cfg.StateFile == "" {
		cfg.StateFile = filepath.Join(cfg.RuntimeDir, "ipam.json")
	}
	if cfg.LookupHost == nil {
		cfg.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
		}
	}
	a, err := loadIPAM(cfg.StateFile, cfg.Subnet, cfg.Bridge)
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, ipam: a, gatewayAddr: gateway(cfg.Subnet)}, nil
}

// Gateway is the bridge's address: the sessions' default route.
func (m *Manager) Gateway() netip.Addr { return m.gatewayAddr }

// Start claims the bridge for this Manager (another Manager holding it, in
// this process or another, is an error) and builds the table from scratch:
// whatever a table of that name holds, left by an earlier run or changed
// since, is replaced in one atomic transaction by the fixed rules and the
// rules of every session the state file records. The server calls it once
// at start; Setup calls it if nobody has.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.start()
}

func (m *Manager) start() error {
	if m.lock != nil {
		return nil
	}
	l, err := lockBridge(m.cfg.Bridge)
	if err != nil {
		return err
	}
	if err := m.Check(); err != nil {
		l.Close()
		return err
	}
	if err := m.rebuild(); err != nil {
		l.Close()
		return err
	}
	m.lock = l
	return nil
}

// Close gives up the claim on the bridge, leaving sessions, rules and
// bridge as they are: a later Manager's Start takes them over.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unlock()
	return nil
}

func (m *Manager) unlock() {
	if m.lock != nil {
		m.lock.Close()
		m.lock = nil
	}
}

// lockBridge claims bridge for this process through an abstract unix
// socket, which the kernel releases when the process ends.
func lockBridge(bridge string) (net.Listener, error) {
	l, err := net.Listen("unix", "@devgpu-netpolicy-bridge-"+bridge)
	if errors.Is(err, unix.EADDRINUSE) {
		return nil, fmt.Errorf("netpolicy: bridge %s is in use by another devgpu server on this host; give each server its own bridge and subnet (oci bridge and subnet in the server config)", bridge)
	}
	if err != nil {
		return nil, fmt.Errorf("netpolicy: claiming bridge %s: %w", bridge, err)
	}
	return l, nil
}

// Session is what the Manager records about a live session.
type Session struct {
	ID        string
	NetnsPath string
	Addr      netip.Addr // invalid for mode none
}

// List returns the sessions the Manager has set up and not torn down,
// including those of an earlier run of the control plane (for
// reconciliation: tear down the ones it no longer knows).
func (m *Manager) List() []Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Session
	for id, r := range m.ipam.state.Sessions {
		s := Session{ID: id, NetnsPath: filepath.Join(m.cfg.RuntimeDir, r.Name)}
		s.Addr, _ = netip.ParseAddr(r.Addr)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Session) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Setup creates the session's network namespace and applies egress to it,
// returning the path of the namespace for runc to join. On failure it
// leaves nothing behind. A session that is already set up is an error.
func (m *Manager) Setup(ctx context.Context, sessionID string, egress sdk.Egress) (netnsPath string, err error) {
	if sessionID == "" {
		return "", errors.New("netpolicy: empty session id")
	}
	if err := policy.ValidateEgress(egress); err != nil {
		return "", fmt.Errorf("netpolicy: %w", err)
	}
	var dests []dest
	if egress.Mode == modeAllow {
		// Resolve before taking the lock: DNS may be slow.
		if dests, err = m.resolve(ctx, egress.Allow); err != nil {
			return "", err
		}
	}
	hostDests, err := parseHostAccess(egress.HostAccess)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ipam.state.Sessions[sessionID]; ok {
		return "", fmt.Errorf("netpolicy: session %s is set up already", sessionID)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if egress.Mode != modeNone {
		if err := m.ensureHost(); err != nil {
			return "", err
		}
	}
	rec := record{Name: nsName(sessionID)}
	var addr netip.Addr
	if egress.Mode != modeNone {
		if addr, err = m.ipam.next(); err != nil {
			return "", err
		}
		rec.Addr = addr.String()
		rec.Veth = vethName(sessionID)
		rec.Mode = egress.Mode
		rec.Allow = encodeDests(dests)
		rec.Host = encodeDests(hostDests)
	}
	// Record first, so that a crash from here on leaves a record for
	// Teardown (and List) to find.
	m.ipam.state.Sessions[sessionID] = rec
	if addr.IsValid() {
		m.ipam.state.Last = addr.String()
	}
	if err := m.ipam.save(); err != nil {
		delete(m.ipam.state.Sessions, sessionID)
		return "", err
	}
	defer func() {
		if err != nil {
			_ = m.teardown(sessionID)
		}
	}()
	path := filepath.Join(m.cfg.RuntimeDir, rec.Name)
	if err := newNetns(path); err != nil {
		return "", err
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return "", fmt.Errorf("netpolicy: opening namespace %s: %w", path, err)
	}
	defer ns.Close()
	in, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", fmt.Errorf("netpolicy: netlink in namespace %s: %w", path, err)
	}
	defer in.Close()
	lo, err := in.LinkByName("lo")
	if err == nil {
		err = in.LinkSetUp(lo)
	}
	if err != nil {
		return "", fmt.Errorf("netpolicy: bringing loopback up in %s: %w", path, err)
	}
	if egress.Mode == modeNone {
		return path, nil
	}
	if err := m.addVeth(in, ns, rec.Veth, addr); err != nil {
		return "", err
	}
	if err := m.addSessionRules(sessionID, rec); err != nil {
		return "", err
	}
	return path, nil
}

// Teardown removes the session's rules, veth and namespace and releases
// its address. It is idempotent: what is already gone is skipped.
func (m *Manager) Teardown(ctx context.Context, sessionID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.teardown(sessionID)
}

func (m *Manager) teardown(sessionID string) error {
	rec, ok := m.ipam.state.Sessions[sessionID]
	if !ok {
		rec = record{Name: nsName(sessionID), Veth: vethName(sessionID)}
	}
	var errs []error
	if err := m.delSessionRules(sessionID, chainName(sessionID)); err != nil {
		errs = append(errs, err)
	}
	veth := rec.Veth
	if veth == "" {
		veth = vethName(sessionID)
	}
	if l, err := netlink.LinkByName(veth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("netpolicy: deleting veth %s: %w", veth, err))
		}
	}
	if err := removeNetns(filepath.Join(m.cfg.RuntimeDir, rec.Name)); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // keep the record so that a retry finds it
	}
	if ok {
		delete(m.ipam.state.Sessions, sessionID)
		return m.ipam.save()
	}
	return nil
}

// Cleanup tears down every recorded session and removes the table, the
// bridge and the state file; it sets ip_forward back to 0 if this Manager
// turned it on and no veth on the host is a bridge port any more (another
// Manager's sessions). For tests and uninstalling.
func (m *Manager) Cleanup(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Never clean up a bridge another live Manager holds.
	if m.lock == nil {
		l, err := lockBridge(m.cfg.Bridge)
		if err != nil {
			return err
		}
		m.lock = l
	}
	defer m.unlock()
	var errs []error
	for id := range m.ipam.state.Sessions {
		if err := m.teardown(id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.delTable(); err != nil {
		errs = append(errs, err)
	}
	// What a lost state file no longer names: namespace files in the
	// runtime dir and veths on the bridge.
	if ents, err := os.ReadDir(m.cfg.RuntimeDir); err == nil {
		for _, e := range ents {
			p := filepath.Join(m.cfg.RuntimeDir, e.Name())
			if p == m.cfg.StateFile || p == m.cfg.StateFile+".tmp" || e.IsDir() {
				continue
			}
			if err := removeNetns(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if l, err := netlink.LinkByName(m.cfg.Bridge); err == nil {
		if links, err := netlink.LinkList(); err == nil {
			for _, port := range links {
				if port.Attrs().MasterIndex == l.Attrs().Index && port.Type() == "veth" {
					_ = netlink.LinkDel(port)
				}
			}
		}
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("netpolicy: deleting bridge %s: %w", m.cfg.Bridge, err))
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(m.cfg.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if m.setForward && !bridgedVeths() {
		if err := os.WriteFile(ipForwardPath, []byte("0\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("netpolicy: restoring %s: %w", ipForwardPath, err))
		}
		m.setForward = false
	}
	return errors.Join(errs...)
}

// bridgedVeths reports whether any veth on the host is a bridge port:
// another Manager's live session, which still needs forwarding.
func bridgedVeths() bool {
	links, err := netlink.LinkList()
	if err != nil {
		return true
	}
	for _, l := range links {
		if l.Type() == "veth" && l.Attrs().MasterIndex != 0 {
			return true
		}
	}
	return false
}

// ensureHost makes the table, the bridge and forwarding ready. A table
// that is not as this Manager built it (someone flushed or changed it) is
// rebuilt.
func (m *Manager) ensureHost() error {
	if m.lock == nil {
		if err := m.start(); err != nil {
			return err
		}
	} else if !m.intact() {
		if err := m.rebuild(); err != nil {
			return err
		}
	}
	if err := m.ensureBridge(); err != nil {
		return err
	}
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("netpolicy: reading %s: %w", ipForwardPath, err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("netpolicy: enabling IPv4 forwarding (%s): %w", ipForwardPath, err)
		}
		m.setForward = true
	}
	return nil
}

func (m *Manager) ensureBridge() error {
	l, err := netlink.LinkByName(m.cfg.Bridge)
	index := 0
	if err == nil {
		index = l.Attrs().Index
	}
	if err := m.checkSubnetFree(index); err != nil {
		return err
	}
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("netpolicy: looking up bridge %s: %w", m.cfg.Bridge, err)
		}
		// A fixed MAC address: a bridge otherwise takes its lowest port's,
		// which changes as sessions come and go and stales ARP caches.
		mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0}
		copy(mac[2:], m.gatewayAddr.AsSlice())
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: m.cfg.Bridge, HardwareAddr: mac}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("netpolicy: creating bridge %s: %w", m.cfg.Bridge, err)
		}
		if l, err = netlink.LinkByName(m.cfg.Bridge); err != nil {
			return fmt.Errorf("netpolicy: bridge %s: %w", m.cfg.Bridge, err)
		}
	}
	if _, ok := l.(*netlink.Bridge); !ok {
		return fmt.Errorf("netpolicy: %s exists and is a %s, not a bridge", m.cfg.Bridge, l.Type())
	}
	gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(m.gatewayAddr, m.cfg.Subnet.Bits()))}
	if err := netlink.AddrReplace(l, gw); err != nil {
		return fmt.Errorf("netpolicy: addressing bridge %s: %w", m.cfg.Bridge, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("netpolicy: bringing bridge %s up: %w", m.cfg.Bridge, err)
	}
	return nil
}

// addVeth creates the pair: host end on the bridge (isolated port), eth0
// in the namespace with addr and a default route via the gateway.
func (m *Manager) addVeth(in *netlink.Handle, ns netns.NsHandle, hostName string, addr netip.Addr) error {
	br, err := netlink.LinkByName(m.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("netpolicy: bridge %s: %w", m.cfg.Bridge, err)
	}
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("netpolicy: creating veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("netpolicy: veth %s: %w", hostName, err)
	}
	if err := netlink.LinkSetIsolated(host, true); err != nil {
		return fmt.Errorf("netpolicy: isolating bridge port %s: %w", hostName, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("netpolicy: bringing %s up: %w", hostName, err)
	}
	eth, err := in.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("netpolicy: eth0 in session namespace: %w", err)
	}
	if err := in.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, m.cfg.Subnet.Bits()))}); err != nil {
		return fmt.Errorf("netpolicy: addressing eth0: %w", err)
	}
	if err := in.LinkSetUp(eth); err != nil {
		return fmt.Errorf("netpolicy: bringing eth0 up: %w", err)
	}
	// The kernel brings the bridge port to forwarding asynchronously once
	// the carrier is up (linkwatch); a packet sent before that is lost,
	// costing a session's first connection a 1s SYN retransmit. Wait for
	// it, briefly.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		h, err1 := netlink.LinkByName(hostName)
		e, err2 := in.LinkByName("eth0")
		if err1 == nil && err2 == nil && h.Attrs().OperState == netlink.OperUp && e.Attrs().OperState == netlink.OperUp {
			break
		}
	}
	gw := net.IP(m.gatewayAddr.AsSlice())
	if err := in.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("netpolicy: default route via %s: %w", m.gatewayAddr, err)
	}
	return nil
}

// checkSubnetFree fails if an interface other than the bridge holds an
// address in the subnet (another server's bridge, or the bridge of an
// earlier run under another name): the host could not route to both.
func (m *Manager) checkSubnetFree(bridgeIndex int) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("netpolicy: listing the host's addresses: %w", err)
	}
	for _, a := range addrs {
		if a.LinkIndex == bridgeIndex || a.IPNet == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		if !netip.PrefixFrom(p, ones).Overlaps(m.cfg.Subnet) {
			continue
		}
		name := strconv.Itoa(a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		return fmt.Errorf("netpolicy: subnet %s overlaps %s on interface %s; give each devgpu server its own subnet, or delete %s if an earlier run left it behind", m.cfg.Subnet, a.IPNet, name, name)
	}
	return nil
}

// resolve turns allow-list entries into prefixes and ports, resolving host
// names now: their addresses are pinned for the session's life.
func (m *Manager) resolve(ctx context.Context, allow []string) ([]dest, error) {
	var out []dest
	for _, entry := range allow {
		host, port, err := splitDest(entry)
		if err != nil {
			return nil, err
		}
		if d, ok := literalDest(host, port); ok {
			out = append(out, d)
			continue
		}
		addrs, err := m.cfg.LookupHost(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("netpolicy: egress allow-list host %s: %w", host, err)
		}
		n := 0
		for _, a := range addrs {
			if a = a.Unmap(); a.Is4() {
				out = append(out, dest{prefix: netip.PrefixFrom(a, 32), port: port})
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("netpolicy: egress allow-list host %s has no IPv4 address; sessions have IPv4 only", host)
		}
	}
	return out, nil
}

// literalDest reads host as a CIDR or an IP address, the destination's
// port being port; ok is false when host is neither (a name).
func literalDest(host string, port uint16) (d dest, ok bool) {
	if p, err := netip.ParsePrefix(host); err == nil {
		return dest{prefix: p.Masked(), port: port}, true
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return dest{prefix: netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), port: port}, true
	}
	return dest{}, false
}

// splitDest splits "host[:port]", "[v6]:port" or "cidr[:port]".
func splitDest(entry string) (string, uint16, error) {
	if ap, err := netip.ParseAddrPort(entry); err == nil {
		return ap.Addr().String(), ap.Port(), nil
	}
	i := strings.LastIndexByte(entry, ':')
	if i <= 0 || strings.Contains(entry[:i], ":") {
		return entry, 0, nil // no port, or a bare IPv6 address or prefix
	}
	p, err := strconv.ParseUint(entry[i+1:], 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("netpolicy: egress destination %q has an invalid port", entry)
	}
	return entry[:i], uint16(p), nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func idHash(sessionID string) string {
	h := sha256.Sum256([]byte(sessionID))
	return hex.EncodeToString(h[:])
}

// nsName is the namespace's file name: the session id when it is a safe
// file name, else a hash of it.
func nsName(sessionID string) string {
	if safeID.MatchString(sessionID) && sessionID != "ipam.json" && !strings.HasSuffix(sessionID, ".tmp") {
		return sessionID
	}
	return "s-" + idHash(sessionID)[:24]
}

// vethName is the host end's name: "dg" and 12 hex digits (15 bytes max).
func vethName(sessionID string) string { return "dg" + idHash(sessionID)[:12] }

// chainName is the base of the session's nftables chain names.
func chainName(sessionID string) string { return "s_" + idHash(sessionID)[:16] }

// newNetns creates a network namespace and bind-mounts it at path, without
// changing the calling thread's namespace: the work happens on a locked
// thread that is thrown away if it cannot go back.
func newNetns(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("netpolicy: creating %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("netpolicy: creating namespace file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("netpolicy: current namespace: %w", err)
			return // the thread dies with its lock; harmless
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netpolicy: creating network namespace: %w", err)
			runtime.UnlockOSThread()
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		err = unix.Mount(src, path, "none", unix.MS_BIND, "")
		if err2 := netns.Set(orig); err2 != nil {
			// Leave the thread locked: Go ends it with the goroutine.
			errc <- errors.Join(err, fmt.Errorf("netpolicy: returning to host namespace: %w", err2))
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			err = fmt.Errorf("netpolicy: bind-mounting namespace at %s: %w", path, err)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeNetns unmounts and removes a namespace's file; a missing one is
// fine. The namespace itself goes when its last process leaves.
func removeNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netpolicy: unmounting %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netpolicy: removing %s: %w", path, err)
	}
	return nil
}
