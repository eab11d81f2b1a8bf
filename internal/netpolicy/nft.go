package netpolicy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table's chains: base chains hooked into the kernel, two regular
// chains that dispatch by a session's source address to its own chains,
// and per session a chain for what it forwards and one for what it sends
// to the host itself.
const (
	chainPrerouting = "prerouting"
	chainForward    = "forward"
	chainInput      = "input"
	chainPostNAT    = "postrouting"
	chainSessFwd    = "sessions_fwd"
	chainSessIn     = "sessions_in"
	sessFwdSuffix   = "_fwd"
	sessHostSuffix  = "_host"
	sessInSuffix    = "_in" // an older version's; removed, never made
)

// linkLocal is where clouds serve instance metadata (169.254.169.254):
// host territory, even though it is reached by forwarding.
var linkLocal = netip.MustParsePrefix("169.254.0.0/16")

// dest is one allow-list or host-access entry after name resolution.
type dest struct {
	prefix netip.Prefix
	port   uint16 // 0: any protocol, any port
}

// TableName is the nftables table (family inet) of the Manager of bridge:
// one per bridge, so that servers on other bridges never share, reuse or
// remove each other's rules.
func TableName(bridge string) string { return "devgpu_" + bridge }

func (m *Manager) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(m.cfg.Bridge)}
}

// Check reports whether this kernel lets the Manager use nftables, by
// creating (and keeping) its table; Setup calls it, and its error says
// plainly when nftables is missing.
func (m *Manager) Check() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netpolicy: nftables is not available (netlink: %w); the egress policy needs a kernel with nf_tables", err)
	}
	c.AddTable(m.table())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: nftables is not available in this kernel (creating table inet %s: %w); the egress policy needs nf_tables (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET) and CAP_NET_ADMIN", m.table().Name, err)
	}
	return nil
}

// Fixed rule counts of the base chains, as rebuild makes them; intact
// compares against them.
const (
	preroutingRules = 3
	forwardRules    = 5
	inputRules      = 3
	natRules        = 1
)

// rebuild replaces the table, whatever it holds, with the fixed chains and
// rules and those of every recorded session, in one transaction: there is
// no moment without rules, and nothing left by an earlier run survives.
func (m *Manager) rebuild() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := m.table()
	if old := m.legacyTable(c); old != nil {
		c.DelTable(old)
	}
	c.AddTable(t) // so that the delete finds it
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: chainPrerouting, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	in := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	nat := c.AddChain(&nftables.Chain{Name: chainPostNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddChain(&nftables.Chain{Name: chainSessFwd, Table: t})
	c.AddChain(&nftables.Chain{Name: chainSessIn, Table: t})

	br := m.cfg.Bridge
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(exprs...)})
	}
	// prerouting (preroutingRules): traffic to a host address is judged
	// before any DNAT (a port a container engine publishes on the host is
	// the host's port too), by the session's host chain.
	rule(pre, ctEstablished(), verdict(expr.VerdictAccept, ""))
	rule(pre, ifname(expr.MetaKeyIIFNAME, br), daddrLocal(), verdict(expr.VerdictJump, chainSessIn))
	rule(pre, ifname(expr.MetaKeyIIFNAME, br), daddrLocal(), verdict(expr.VerdictDrop, ""))
	// forward (forwardRules)
	rule(fwd, ctEstablished(), verdict(expr.VerdictAccept, ""))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br), ifname(expr.MetaKeyOIFNAME, br), verdict(expr.VerdictDrop, ""))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictJump, chainSessFwd))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictDrop, ""))
	rule(fwd, ifname(expr.MetaKeyOIFNAME, br), verdict(expr.VerdictDrop, ""))
	// input (inputRules): every host address, the gateway included.
	rule(in, ctEstablished(), verdict(expr.VerdictAccept, ""))
	rule(in, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictJump, chainSessIn))
	rule(in, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictDrop, ""))
	// postrouting (natRules): masquerade what leaves the subnet through
	// another link.
	rule(nat, ipAddr(12, m.cfg.Subnet), ifnameNeq(expr.MetaKeyOIFNAME, br), []expr.Any{&expr.Masq{}})

	ids := slices.Sorted(maps.Keys(m.ipam.state.Sessions))
	for _, id := range ids {
		if rec := m.ipam.state.Sessions[id]; rec.Addr != "" {
			m.sessionRules(c, id, rec)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: building nftables table inet %s: %w", t.Name, err)
	}
	return nil
}

// legacyTableName is the one table every Manager of older versions
// shared (a variable for tests).
var legacyTableName = "devgpu"

// legacyTable returns the older versions' table if its rules name this
// Manager's bridge: an earlier run of this server left it, and its rules
// would drop the new sessions' traffic. A legacy table of another bridge is
// left alone.
func (m *Manager) legacyTable(c *nftables.Conn) *nftables.Table {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: legacyTableName}
	if t.Name == m.table().Name {
		return nil
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: chainForward, Table: t})
	if err != nil {
		return nil
	}
	want := ifnameBytes(m.cfg.Bridge)
	for _, r := range rules {
		for _, e := range r.Exprs {
			if cmp, ok := e.(*expr.Cmp); ok && bytes.Equal(cmp.Data, want) {
				return t
			}
		}
	}
	return nil
}

// intact reports whether the table still holds what rebuild and Setup put
// there: the base chains with their rules and one dispatch rule per
// recorded session.
func (m *Manager) intact() bool {
	c, err := nftables.New()
	if err != nil {
		return false
	}
	t := m.table()
	sessions := 0
	for _, r := range m.ipam.state.Sessions {
		if r.Addr != "" {
			sessions++
		}
	}
	for name, want := range map[string]int{chainPrerouting: preroutingRules, chainForward: forwardRules, chainInput: inputRules,
		chainPostNAT: natRules, chainSessFwd: sessions, chainSessIn: sessions} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
		if err != nil || len(rules) != want {
			return false
		}
	}
	return true
}

// addSessionRules adds a session's chains and the dispatch rules that jump
// to them.
func (m *Manager) addSessionRules(sessionID string, rec record) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	m.sessionRules(c, sessionID, rec)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: adding nftables rules for session %s: %w", sessionID, err)
	}
	return nil
}

// sessionRules queues a session's chains and dispatch rules (tagged with
// the session id) on c.
//
// What it sends to the host's own addresses, and to the link-local range,
// goes to its host chain: the organisation's host-access entries naming a
// port, the API port closed, the other entries, then drop. What it
// forwards elsewhere follows its egress mode. A record without a known
// mode lets nothing through.
func (m *Manager) sessionRules(c *nftables.Conn, sessionID string, rec record) {
	t := m.table()
	base := chainName(sessionID)
	fwd := c.AddChain(&nftables.Chain{Name: base + sessFwdSuffix, Table: t})
	host := c.AddChain(&nftables.Chain{Name: base + sessHostSuffix, Table: t})
	add := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(exprs...)})
	}
	allow := func(ch *nftables.Chain, d dest) {
		if !d.prefix.Addr().Is4() {
			return // sessions have IPv4 only
		}
		if d.port == 0 {
			add(ch, ipAddr(16, d.prefix), verdict(expr.VerdictAccept, ""))
			return
		}
		for _, p := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			add(ch, ipAddr(16, d.prefix), l4proto(p), dport(d.port), verdict(expr.VerdictAccept, ""))
		}
	}
	known := rec.Mode == modeAll || rec.Mode == modeAllow
	if known {
		hostDests := decodeDests(rec.Host)
		for _, d := range hostDests {
			if d.port != 0 {
				allow(host, d)
			}
		}
		if m.cfg.APIPort != 0 {
			add(host, l4proto(unix.IPPROTO_TCP), dport(m.cfg.APIPort), verdict(expr.VerdictDrop, ""))
		}
		for _, d := range hostDests {
			if d.port == 0 {
				allow(host, d)
			}
		}
	}
	add(host, verdict(expr.VerdictDrop, ""))

	add(fwd, ipAddr(16, linkLocal), verdict(expr.VerdictJump, host.Name))
	switch rec.Mode {
	case modeAll:
		add(fwd, verdict(expr.VerdictAccept, ""))
	case modeAllow:
		for _, d := range decodeDests(rec.Allow) {
			allow(fwd, d)
		}
		add(fwd, verdict(expr.VerdictDrop, ""))
	default:
		add(fwd, verdict(expr.VerdictDrop, ""))
	}

	addr := netip.MustParseAddr(rec.Addr)
	src := netip.PrefixFrom(addr, 32)
	tag := []byte(sessionID)
	c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chainSessFwd, Table: t}, UserData: tag,
		Exprs: slices.Concat(ipAddr(12, src), verdict(expr.VerdictJump, fwd.Name))})
	c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chainSessIn, Table: t}, UserData: tag,
		Exprs: slices.Concat(ipAddr(12, src), verdict(expr.VerdictJump, host.Name))})
}

// encodeDests writes destinations for the state file as "prefix" or
// "prefix:port"; IPv6 ones, which never match, are left out.
func encodeDests(ds []dest) []string {
	var out []string
	for _, d := range ds {
		if !d.prefix.Addr().Is4() {
			continue
		}
		s := d.prefix.String()
		if d.port != 0 {
			s += ":" + strconv.Itoa(int(d.port))
		}
		out = append(out, s)
	}
	return out
}

// decodeDests reads what encodeDests wrote, skipping what does not parse.
func decodeDests(ss []string) []dest {
	var out []dest
	for _, s := range ss {
		host, port, err := splitDest(s)
		if err != nil {
			continue
		}
		if p, err := netip.ParsePrefix(host); err == nil {
			out = append(out, dest{prefix: p.Masked(), port: port})
		}
	}
	return out
}

// parseHostAccess reads the organisation's host-access entries: CIDRs or
// IP addresses with an optional :port, never names.
func parseHostAccess(entries []string) ([]dest, error) {
	var out []dest
	for _, entry := range entries {
		host, port, err := splitDest(entry)
		if err != nil {
			return nil, err
		}
		if d, ok := literalDest(host, port); ok {
			out = append(out, d)
			continue
		}
		return nil, fmt.Errorf("netpolicy: host access entry %q is not a CIDR or IP address (optionally with :port)", entry)
	}
	return out, nil
}

// delSessionRules removes a session's dispatch rules and chains; what is
// not there is skipped.
func (m *Manager) delSessionRules(sessionID, chainBase string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := m.table()
	if tb, err := c.ListTableOfFamily(t.Name, t.Family); err != nil || tb == nil {
		return nil // no table, nothing to remove
	}
	n := 0
	for _, name := range []string{chainSessFwd, chainSessIn} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
		if err != nil {
			continue
		}
		for _, r := range rules {
			if bytes.Equal(r.UserData, []byte(sessionID)) {
				if err := c.DelRule(r); err != nil {
					return err
				}
				n++
			}
		}
	}
	for _, name := range []string{chainBase + sessFwdSuffix, chainBase + sessHostSuffix, chainBase + sessInSuffix} {
		if ch, err := c.ListChain(t, name); err == nil && ch != nil {
			c.FlushChain(ch)
			c.DelChain(ch)
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: removing nftables rules of session %s: %w", sessionID, err)
	}
	return nil
}

// delTable removes the whole table, if there.
func (m *Manager) delTable() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := m.table()
	if tb, err := c.ListTableOfFamily(t.Name, t.Family); err != nil || tb == nil {
		return nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: deleting nftables table inet %s: %w", t.Name, err)
	}
	return nil
}

// Expression builders. Every rule matches in register 1.

func verdict(k expr.VerdictKind, chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k, Chain: chain}}
}

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func ifname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}
}

func ifnameNeq(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(name)},
	}
}

// ipAddr matches an IPv4 packet whose source (offset 12) or destination
// (offset 16) address lies in p.
func ipAddr(offset uint32, p netip.Prefix) []expr.Any {
	if !p.Addr().Is4() {
		return nil
	}
	p = p.Masked()
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	if p.Bits() == 0 {
		mask = []byte{0, 0, 0, 0}
	}
	a := p.Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func dport(port uint16) []expr.Any {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, port)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// daddrLocal matches packets whose destination is one of the host's own
// addresses (fib daddr type local).
func daddrLocal() []expr.Any {
	local := make([]byte, 4)
	binary.NativeEndian.PutUint32(local, unix.RTN_LOCAL)
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: local},
	}
}

func ctEstablished() []expr.Any {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}
