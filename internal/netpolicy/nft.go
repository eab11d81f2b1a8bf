package netpolicy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The table's chains: base chains hooked into the kernel, and two regular
// chains that dispatch by a session's source address to its own chains.
const (
	chainForward  = "forward"
	chainInput    = "input"
	chainPostNAT  = "postrouting"
	chainSessFwd  = "sessions_fwd"
	chainSessIn   = "sessions_in"
	sessFwdSuffix = "_fwd"
	sessInSuffix  = "_in"
)

// dest is one allow-list entry after name resolution.
type dest struct {
	prefix netip.Prefix
	port   uint16 // 0: any protocol, any port
}

func (m *Manager) table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: m.cfg.Table}
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
		return fmt.Errorf("netpolicy: nftables is not available in this kernel (creating table inet %s: %w); the egress policy needs nf_tables (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET) and CAP_NET_ADMIN", m.cfg.Table, err)
	}
	return nil
}

// ensureTable creates the table and its fixed chains and rules unless they
// are there already.
func (m *Manager) ensureTable() error {
	if err := m.Check(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := m.table()
	if ch, err := c.ListChain(t, chainSessIn); err == nil && ch != nil {
		return nil // built before
	}
	// A half-built table (an earlier failure) is rebuilt from scratch; it
	// has no session chains yet, since those come after.
	c.FlushTable(t)
	accept := nftables.ChainPolicyAccept
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
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	// forward
	rule(fwd, ctEstablished(), verdict(expr.VerdictAccept, ""))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br), ifname(expr.MetaKeyOIFNAME, br), verdict(expr.VerdictDrop, ""))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictJump, chainSessFwd))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictDrop, ""))
	rule(fwd, ifname(expr.MetaKeyOIFNAME, br), verdict(expr.VerdictDrop, ""))
	// input
	rule(in, ctEstablished(), verdict(expr.VerdictAccept, ""))
	rule(in, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictJump, chainSessIn))
	rule(in, ifname(expr.MetaKeyIIFNAME, br), verdict(expr.VerdictDrop, ""))
	// postrouting: masquerade what leaves the subnet through another link.
	rule(nat, ipAddr(12, m.cfg.Subnet), ifnameNeq(expr.MetaKeyOIFNAME, br), []expr.Any{&expr.Masq{}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: creating nftables table inet %s: %w", m.cfg.Table, err)
	}
	return nil
}

// addSessionRules adds a session's chains and the dispatch rules that jump
// to them, tagged with the session id.
func (m *Manager) addSessionRules(sessionID, chainBase string, addr netip.Addr, mode string, dests []dest) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := m.table()
	fwd := c.AddChain(&nftables.Chain{Name: chainBase + sessFwdSuffix, Table: t})
	in := c.AddChain(&nftables.Chain{Name: chainBase + sessInSuffix, Table: t})
	add := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	apiDrop := func() {
		if m.cfg.APIPort != 0 {
			add(in, l4proto(unix.IPPROTO_TCP), dport(m.cfg.APIPort), verdict(expr.VerdictDrop, ""))
		}
	}
	switch mode {
	case modeAll:
		add(fwd, verdict(expr.VerdictAccept, ""))
		apiDrop()
		add(in, verdict(expr.VerdictAccept, ""))
	default: // allow-list
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
		for _, d := range dests {
			allow(fwd, d)
		}
		add(fwd, verdict(expr.VerdictDrop, ""))
		// To the host: entries naming a port first (so naming the API port
		// opens it), then the API port closed, then the rest.
		for _, d := range dests {
			if d.port != 0 {
				allow(in, d)
			}
		}
		apiDrop()
		for _, d := range dests {
			if d.port == 0 {
				allow(in, d)
			}
		}
		add(in, verdict(expr.VerdictDrop, ""))
	}
	src := ipAddr(12, netip.PrefixFrom(addr, 32))
	tag := []byte(sessionID)
	c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chainSessFwd, Table: t}, UserData: tag,
		Exprs: append(src, verdict(expr.VerdictJump, fwd.Name)...)})
	c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chainSessIn, Table: t}, UserData: tag,
		Exprs: append(ipAddr(12, netip.PrefixFrom(addr, 32)), verdict(expr.VerdictJump, in.Name)...)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netpolicy: adding nftables rules for session %s: %w", sessionID, err)
	}
	return nil
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
	for _, name := range []string{chainBase + sessFwdSuffix, chainBase + sessInSuffix} {
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

func ctEstablished() []expr.Any {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}
