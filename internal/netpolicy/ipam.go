package netpolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// ipam hands out the subnet's addresses to sessions and keeps the record in
// a file, so that a restarted control plane never reuses the address of a
// session that still lives. It is not safe for concurrent use; Manager
// holds its lock around it.
type ipam struct {
	path   string
	subnet netip.Prefix
	state  ipamState
}

// ipamState is the file's content.
type ipamState struct {
	Subnet string `json:"subnet"`
	// Bridge is the bridge the sessions are on (empty in files of older
	// versions: the configured one).
	Bridge string `json:"bridge,omitempty"`
	// Last is the address handed out most recently: the search for a free
	// one starts after it, so that a released address is not reused at once.
	Last     string            `json:"last,omitempty"`
	Sessions map[string]record `json:"sessions"`
}

// record is what the allocator keeps per session: enough to rebuild its
// rules after a restart.
type record struct {
	Addr string `json:"addr,omitempty"` // empty for mode none
	Name string `json:"name"`           // namespace file name
	Veth string `json:"veth,omitempty"` // host end of the veth pair
	// Mode, Allow and Host are the session's egress, allow-list names
	// resolved (see encodeDests). A record without a mode (an older
	// version's) gets rules that let nothing through.
	Mode  string   `json:"mode,omitempty"`
	Allow []string `json:"allow,omitempty"`
	Host  []string `json:"host,omitempty"`
}

func loadIPAM(path string, subnet netip.Prefix, bridge string) (*ipam, error) {
	a := &ipam{path: path, subnet: subnet, state: ipamState{Subnet: subnet.String(), Bridge: bridge, Sessions: map[string]record{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netpolicy: reading address state: %w", err)
	}
	if err := json.Unmarshal(b, &a.state); err != nil {
		return nil, fmt.Errorf("netpolicy: address state %s is corrupt: %w", path, err)
	}
	if a.state.Subnet != subnet.String() && len(a.state.Sessions) > 0 {
		return nil, fmt.Errorf("netpolicy: address state %s is for subnet %s with %d live sessions, not %s; tear them down first",
			path, a.state.Subnet, len(a.state.Sessions), subnet)
	}
	live := 0
	for _, r := range a.state.Sessions {
		if r.Addr != "" {
			live++
		}
	}
	if a.state.Bridge != "" && a.state.Bridge != bridge && live > 0 {
		return nil, fmt.Errorf("netpolicy: address state %s is for bridge %s with %d live sessions, not %s; tear them down first",
			path, a.state.Bridge, live, bridge)
	}
	a.state.Subnet = subnet.String()
	a.state.Bridge = bridge
	if a.state.Sessions == nil {
		a.state.Sessions = map[string]record{}
	}
	return a, nil
}

// save writes the state atomically.
func (a *ipam) save() error {
	if err := os.MkdirAll(filepath.Dir(a.path), 0o700); err != nil {
		return fmt.Errorf("netpolicy: saving address state: %w", err)
	}
	b, err := json.MarshalIndent(a.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := a.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("netpolicy: saving address state: %w", err)
	}
	if err := os.Rename(tmp, a.path); err != nil {
		return fmt.Errorf("netpolicy: saving address state: %w", err)
	}
	return nil
}

// gateway is the subnet's first address, held by the bridge.
func gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// next returns the next free address after the last one given out,
// skipping the network address, the gateway and the broadcast address.
func (a *ipam) next() (netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, r := range a.state.Sessions {
		if ad, err := netip.ParseAddr(r.Addr); err == nil {
			used[ad] = true
		}
	}
	first := gateway(a.subnet).Next()
	start := first
	if last, err := netip.ParseAddr(a.state.Last); err == nil && a.subnet.Contains(last) {
		start = last.Next()
	}
	ad := start
	for {
		if !a.subnet.Contains(ad) || isBroadcast(a.subnet, ad) {
			ad = first
		}
		if !used[ad] && a.subnet.Contains(ad) && !isBroadcast(a.subnet, ad) {
			return ad, nil
		}
		ad = ad.Next()
		if ad == start {
			return netip.Addr{}, fmt.Errorf("netpolicy: subnet %s has no free address (%d sessions)", a.subnet, len(used))
		}
	}
}

func isBroadcast(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	host := uint32(1)<<(32-p.Bits()) - 1
	return v&host == host
}
