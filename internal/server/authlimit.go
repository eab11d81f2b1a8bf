package server

import (
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/devgpu/devgpu/internal/httpapi"
)

// A login (POST /api/v1/auth/oidc, the web console's
// POST /api/v1/console/login and /console/sso/callback, which need no
// credential) is limited per client address, so that nobody can use the
// server to try stolen tokens at speed, nor flood the identity provider
// and the audit log through it. The address is the TCP peer, as the front
// door's own caps use (remoteHost): a forwarded-for header is not
// trusted.
const (
	// authRate and authBurst: authBurst requests at once, then one a
	// second, per address. Behind a reverse proxy or a NAT every person
	// shares one address, so the limit stops a flood, not an
	// organisation logging in at nine; the provider calls a request
	// can cause are limited in internal/sso besides (cached discovery and
	// keys).
	authRate  = rate.Limit(1)
	authBurst = 60
	// authAddrs caps the addresses remembered; beyond it the idle ones
	// (whose bucket is full again, so forgetting them changes nothing)
	// go first, then the least recently seen.
	authAddrs = 10000
)

var errTooManyLogins = "too many login attempts from this address; try again in a minute"

// authLimiter is the per-address limit of the sign-in endpoints.
type authLimiter struct {
	mu    sync.Mutex
	addrs map[string]*addrLimit
	rate  rate.Limit
	burst int
	max   int
	now   func() time.Time
}

type addrLimit struct {
	lim  *rate.Limiter
	seen time.Time
}

func newAuthLimiter(now func() time.Time) *authLimiter {
	return &authLimiter{addrs: map[string]*addrLimit{}, rate: authRate, burst: authBurst, max: authAddrs, now: now}
}

// allow takes one request of addr, or says how long until it may try
// again.
func (l *authLimiter) allow(addr string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	a := l.addrs[addr]
	if a == nil {
		if len(l.addrs) >= l.max {
			l.evict(now)
		}
		a = &addrLimit{lim: rate.NewLimiter(l.rate, l.burst)}
		l.addrs[addr] = a
	}
	a.seen = now
	r := a.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Minute
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// evict makes room for one more address: the idle ones go (their bucket
// is full again), or, when none is, the least recently seen.
func (l *authLimiter) evict(now time.Time) {
	refill := time.Duration(float64(l.burst) / float64(l.rate) * float64(time.Second))
	var oldest string
	for addr, a := range l.addrs {
		if now.Sub(a.seen) >= refill {
			delete(l.addrs, addr)
			continue
		}
		if oldest == "" || a.seen.Before(l.addrs[oldest].seen) {
			oldest = addr
		}
	}
	if len(l.addrs) >= l.max && oldest != "" {
		delete(l.addrs, oldest)
	}
}

// limited serves h only within the client address's limit (429 with
// Retry-After beyond it). A nil limiter (tests) limits nothing.
func (a *API) limited(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l := a.s.authLimit; l != nil {
			if ok, wait := l.allow(limitKey(remoteHost(r.RemoteAddr))); !ok {
				secs := int((wait + time.Second - 1) / time.Second)
				w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
				httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusTooManyRequests, "%s", errTooManyLogins))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// limitKey is the address a limit counts against: an IPv4 address, or an
// IPv6 address's /64, since one host commonly holds a whole /64 and would
// otherwise get a burst per address.
func limitKey(host string) string {
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Is4() || ip.Is4In6() {
		return host
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return host
	}
	return p.String()
}
