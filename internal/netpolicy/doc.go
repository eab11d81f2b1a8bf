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
// Each Manager owns one bridge and one nftables table named after it,
// inet devgpu_<bridge> (TableName), and touches nothing else on the host;
// Cleanup deletes it. A second Manager on the same bridge, in this process
// or another, is refused (Start claims the bridge through an abstract unix
// socket that the kernel releases when the process ends), as is a subnet
// that another interface already holds. So two servers on one host never
// share, reuse or remove each other's rules.
//
// The table is never trusted: Start (the server calls it once; Setup does
// if nobody has) replaces whatever a table of that name holds, left by an
// earlier run or changed since, with the fixed rules and the rules of
// every session in the state file, in one atomic transaction. The state
// file therefore records each session's egress, allow-list names resolved,
// and the bridge; a restart with another bridge or subnet is refused while
// sessions of the old one live. Setup checks that the table still holds
// what was built (base chains and one dispatch rule per session) and
// rebuilds it if not. A table from an older version ("inet devgpu") is
// left alone: it can only drop more.
//
//   - prerouting (before any DNAT): traffic from the bridge to any of the
//     host's own addresses (fib daddr type local) goes to the sending
//     session's host chain, or is dropped if no session has its source;
//     so a port that a container engine publishes on a host address by
//     DNAT is a host port like any other.
//   - forward: replies (ct established,related) pass; traffic that enters
//     and leaves through the bridge (session to session, routed through the
//     host) is dropped; traffic from a session's address jumps to that
//     session's chain; anything else from the bridge (an unknown or spoofed
//     source, IPv6) is dropped, as is anything new towards the sessions.
//   - input (traffic to any of the host's own addresses: the gateway,
//     other interfaces' addresses, other servers' bridges): the same, to
//     the session's host chain.
//   - postrouting (nat): traffic from the subnet that leaves through
//     another interface is masqueraded, so that replies find their way back.
//
// A session's host chain holds the host services it may reach: none,
// unless the organisation's host access (sdk.OrgPolicy.AllowHostAccess,
// which the server copies into sdk.Egress.HostAccess) names them. Entries
// naming a port come first, then the control plane's API port
// (Config.APIPort) is dropped, then entries without a port: so the API
// port opens only to an entry that names it. Traffic to the link-local
// range 169.254.0.0/16 (cloud instance metadata) is forwarded rather than
// delivered, and goes through the host chain too.
//
// Per mode:
//
//   - none: loopback only. The session has no veth and no address at all;
//     it holds no allocator entry and no rules.
//   - allow-list: only the listed destinations outside the host. A CIDR or
//     IP without a port allows every protocol to it; with a port, TCP and
//     UDP to that port only. Host names are resolved once, at Setup, to
//     their IPv4 addresses, and those addresses are pinned for the
//     session's life: a later DNS change does not reach running sessions.
//     A session in allow-list mode can only resolve names if the list
//     includes a DNS server (e.g. 10.0.0.2:53) that is not the host
//     itself. Sessions have IPv4 only, so IPv6 entries are accepted but
//     can never match. Listing a host address or 169.254.169.254 does not
//     open it: host services are the organisation's to open.
//   - all: NAT to the outside world; the host's own services and the
//     link-local range only as host access allows.
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
