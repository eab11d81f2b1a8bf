//go:build linux && !agentonly

package aca

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/devgpu/devgpu/sdk"
)

// Container Apps has no egress rule of its own per app or job: what a
// session may reach is what the environment's network lets through (its
// VNet's NSG and user-defined routes to a firewall, for an environment
// with a custom VNet:
// https://learn.microsoft.com/azure/container-apps/networking and
// .../user-defined-routes). Config.Egress declares what that network
// enforces; checkEgress refuses, before anything is created, a session
// whose project asks for stricter than that. A session never gets less
// isolation than its policy says; it may get more (a project that allows
// everything, on an environment that allows less).

// destination is one allow-list entry: a prefix (or, for a host name,
// the name), and a port (0: any).
type destination struct {
	prefix netip.Prefix
	host   string
	port   uint16
}

// parseDestination reads "host[:port]", "[v6]:port", "cidr[:port]" or an
// address, as the other runtimes' allow-lists do.
func parseDestination(entry string) (destination, error) {
	host, port := entry, uint16(0)
	if ap, err := netip.ParseAddrPort(entry); err == nil {
		a := ap.Addr().Unmap()
		return destination{prefix: netip.PrefixFrom(a, a.BitLen()), port: ap.Port()}, nil
	}
	if h, p, err := net.SplitHostPort(entry); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return destination{}, fmt.Errorf("egress destination %q has an invalid port", entry)
		}
		host, port = h, uint16(n)
	}
	if p, err := netip.ParsePrefix(host); err == nil {
		return destination{prefix: p.Masked(), port: port}, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		return destination{prefix: netip.PrefixFrom(a, a.BitLen()), port: port}, nil
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return destination{}, fmt.Errorf("egress destination %q is neither a CIDR, an address nor a host name", entry)
	}
	return destination{host: strings.ToLower(strings.TrimSuffix(host, ".")), port: port}, nil
}

// covers reports whether d lets through everything e does.
func (d destination) covers(e destination) bool {
	if d.port != 0 && d.port != e.port {
		return false
	}
	if d.host != "" || e.host != "" {
		return d.host == e.host
	}
	return d.prefix.Bits() <= e.prefix.Bits() && d.prefix.Contains(e.prefix.Addr())
}

// checkEgress refuses a session whose egress policy the environment's
// network cannot honour: a policy stricter than what the environment
// enforces. A spec without a mode (no policy given) runs with the
// environment's.
func (c *checked) checkEgress(egress sdk.Egress) error {
	env := c.Egress
	refuse := func(what string) error {
		return fmt.Errorf("aca backend %s cannot enforce the project's egress policy %q: %s; run the project on a backend that isolates sessions itself (oci or kube), or restrict the environment's network (NSG or firewall) and set aca.egress to match", c.Backend, egress.Mode, what)
	}
	switch egress.Mode {
	case "", sdk.EgressAll:
		return nil
	case sdk.EgressNone:
		if env == sdk.EgressNone {
			return nil
		}
		return refuse(fmt.Sprintf("its environment %s lets sessions reach %s (aca.egress %s)", c.Environment, reach(env), env))
	case sdk.EgressAllowList:
		switch env {
		case sdk.EgressNone:
			return nil
		case sdk.EgressAll:
			return refuse(fmt.Sprintf("its environment %s lets sessions reach anywhere (aca.egress all)", c.Environment))
		}
		var allowed []destination
		for _, a := range egress.Allow {
			d, err := parseDestination(a)
			if err != nil {
				return fmt.Errorf("aca backend %s: %w; fix the project's egress allow-list", c.Backend, err)
			}
			allowed = append(allowed, d)
		}
		for _, e := range c.EgressAllow {
			d, _ := parseDestination(e) // check parsed them
			ok := false
			for _, a := range allowed {
				if a.covers(d) {
					ok = true
					break
				}
			}
			if !ok {
				return refuse(fmt.Sprintf("its environment %s lets sessions reach %s, which the project's allow-list does not", c.Environment, e))
			}
		}
		return nil
	}
	return fmt.Errorf("aca backend %s: egress mode %q is not one of none, allow-list or all", c.Backend, egress.Mode)
}

func reach(env string) string {
	if env == sdk.EgressAll {
		return "anywhere"
	}
	return "the destinations of aca.egress_allow"
}
