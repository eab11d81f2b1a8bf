// Package netpolicy puts sessions in their own network namespaces and
// enforces a project's egress policy (sdk.Egress) on them: the local form
// of vNet injection, used by the oci runtime.
//
// # What Setup builds
//
// Each session gets a network namespace, bind-mounted at
// RuntimeDir/<name> so that runc can join it by path (the OCI spec's
// linux.namespaces entry {"type": "network", "path": ...}). Its loopback
// is up. Unless the mode is none, a veth pair joins it to a host bridge
// (Config.Bridge, holding the first address of Config.Subnet as the
// sessions' gateway): eth0 inside with an address from the subnet and a
// default route via the bridge, and a host end enslaved to the bridge as
// an isolated port (IFLA_BRPORT_ISOLATED), so that sessions never talk to
// each other at layer 2.
//
// Addresses come from a small allocator persisted to Config.StateFile
// (default RuntimeDir/ipam.json). A restarted control plane therefore does
// not hand out the address of a session that still lives; the file sits
// under /run by default because namespaces do not outlive a reboot either.
// List returns the sessions it records, for reconciliation.
//
// # The rules
//
// One nftables table (Config.Table, default "inet devgpu") holds every
// rule; nothing else on the host is touched, and Cleanup deletes it:
//
//   - forward: replies (ct established,related) pass; traffic that enters
//     and leaves through the bridge (session to session, routed through the
//     host) is dropped; traffic from a session's address jumps to that
//     session's chain; anything else from the bridge (an unknown or spoofed
//     source) is dropped, as is anything new towards the sessions.
//   - input (traffic to the host itself): the same, and every session
//     chain first drops TCP to the control plane's API port (Config.APIPort)
//     on any host address, unless an allow-list entry names that port.
//   - postrouting (nat): traffic from the subnet that leaves through
//     another interface is masqueraded, so that replies find their way back.
//
// Per mode:
//
//   - none: loopback only. The session has no veth and no address at all;
//     it holds no allocator entry and no rules.
//   - allow-list: only the listed destinations. A CIDR or IP without a port
//     allows every protocol to it; with a port, TCP and UDP to that port
//     only. Host names are resolved once, at Setup, to their IPv4 addresses,
//     and those addresses are pinned for the session's life: a later DNS
//     change does not reach running sessions. A session in allow-list mode
//     can only resolve names if the list includes a DNS server (e.g.
//     10.0.0.2:53). Sessions have IPv4 only, so IPv6 entries are accepted
//     but can never match.
//   - all: NAT to the host's network, and the host's own services, except
//     the control plane's API port.
//
// Setup enables IPv4 forwarding (/proc/sys/net/ipv4/ip_forward = 1)
// whenever a session needs a veth; without it the host would not route
// session traffic. It stays on while the control plane runs (Teardown does
// not touch it); Cleanup sets it back to 0 only if this Manager was the one
// that turned it on and no other bridge port (veth) is left on the host.
//
// Everything is done through netlink (github.com/vishvananda/netlink) and
// nftables netlink messages (github.com/google/nftables); nothing shells
// out to ip, iptables or nft. If the kernel lacks nftables, Setup fails with
// an error that says so (see Check).
//
// Limits: a session that holds CAP_NET_ADMIN or CAP_NET_RAW inside its
// namespace could change or forge its source address and so take another
// session's policy (runc's default capabilities grant neither); unknown
// source addresses are dropped.
package netpolicy
