package netpolicy

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

// The organisation's host access (sdk.OrgPolicy.AllowHostAccess, carried
// in sdk.Egress.HostAccess) opens exactly the host services it names, in
// either mode; the API port only when an entry names it; and a restart
// rebuilds the same openings from the state file.
func TestHostAccessOpensOnlyWhatItNames(t *testing.T) {
	dir := t.TempDir()
	needRoot(t)
	out := newOutside(t, dir)
	cfg := testConfig(t, dir)
	hostSvc := serve(t, "", netip.AddrPortFrom(out.hostIP, 0).String())
	hostOther := serve(t, "", netip.AddrPortFrom(out.hostIP, 0).String())
	api := serve(t, "", netip.AddrPortFrom(out.hostIP, 0).String())
	cfg.APIPort = netip.MustParseAddrPort(api).Port()
	m := testManager(t, cfg)
	gw := m.Gateway()
	md := metadata(t, dir, cfg.Bridge)

	published := publish(t, out.hostIP, netip.MustParseAddrPort(out.listed))
	nsAll := mustSetup(t, m, "s-all", sdk.Egress{Mode: sdk.EgressAll,
		HostAccess: []string{hostSvc, metadataIP + ":80", published}})
	nsAllow := mustSetup(t, m, "s-allow", sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{out.listed},
		HostAccess: []string{gw.String(), out.hostIP.String()}})
	nsAPI := mustSetup(t, m, "s-api", sdk.Egress{Mode: sdk.EgressAll,
		HostAccess: []string{"0.0.0.0/0:" + strconv.Itoa(int(cfg.APIPort))}})
	gwSvc := serve(t, "", netip.AddrPortFrom(gw, 0).String())
	gwAPI := netip.AddrPortFrom(gw, cfg.APIPort).String()

	check := func(when string) {
		t.Helper()
		reach(t, when+"all: host service allowed", nsAll, hostSvc)
		reach(t, when+"all: metadata allowed", nsAll, md)
		noReach(t, when+"all: other host service", nsAll, hostOther)
		noReach(t, when+"all: gateway service", nsAll, gwSvc)
		noReach(t, when+"all: API port", nsAll, api)
		reach(t, when+"all: outside", nsAll, out.unlisted)
		reach(t, when+"all: published host port allowed", nsAll, published)

		reach(t, when+"allow-list: gateway allowed (any port)", nsAllow, gwSvc)
		reach(t, when+"allow-list: host address allowed (any port)", nsAllow, hostOther)
		noReach(t, when+"allow-list: API port on an allowed address", nsAllow, api)
		noReach(t, when+"allow-list: API port via the gateway", nsAllow, gwAPI)
		noReach(t, when+"allow-list: metadata", nsAllow, md)
		noReach(t, when+"allow-list: outside, unlisted", nsAllow, out.unlisted)

		reach(t, when+"API named: API port", nsAPI, api)
		noReach(t, when+"API named: other host service", nsAPI, hostOther)
	}
	check("")

	m.Close()
	m2 := startManager(t, cfg)
	defer m2.Close()
	check("restarted: ")
}
