package server

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/httpapi"
)

// The front door: what bounds the work and the file descriptors one client
// can make the server hold. Zero values in Config take these defaults.
const (
	// DefaultReadHeaderTimeout bounds the TLS handshake and the headers.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds reading a whole request, body included: a
	// client that sends its headers but not its body is cut there. It does
	// not cut long answers: net/http lifts the deadline once the body is
	// read (its background read) and on a WebSocket's hijack.
	DefaultReadTimeout = 30 * time.Second
	// DefaultIdleTimeout closes keep-alive connections with no request.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultMaxTunnelsPerUser and DefaultMaxTunnelsPerAddress cap the
	// shells (WebSocket tunnels) open at once by one user and from one
	// remote address.
	DefaultMaxTunnelsPerUser    = 32
	DefaultMaxTunnelsPerAddress = 128
	// DefaultMaxConnsPerAddress caps the connections open at once from one
	// remote address; one over it is closed as soon as it is accepted.
	DefaultMaxConnsPerAddress = 256
	// maxHeaderBytes bounds the request line and headers. (Bodies are
	// bounded where they are read, by httpapi.Read.)
	maxHeaderBytes = 64 << 10
)

// fdBudget splits the open-file limit: a headroom for the store, the
// runtime, logs and agents' pipes, and the rest shared between client
// connections and the agent connections of tunnels (two descriptors per
// tunnel: its client connection, counted among connections, and its agent).
func fdBudget(limit int) (conns, tunnels int) {
	headroom := max(256, limit/4)
	budget := max(limit-headroom, 16)
	return budget / 2, budget / 2
}

// openFileLimit is the soft RLIMIT_NOFILE, or a conservative guess.
func openFileLimit() int {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<30 {
		return 1024
	}
	return int(r.Cur)
}

// RaiseOpenFileLimit raises the soft open-file limit to the hard one and
// returns the new soft limit. (The Go runtime does the same at start since
// Go 1.19; doing it here keeps it so whatever started the process.)
func RaiseOpenFileLimit() (int, error) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
			return openFileLimit(), fmt.Errorf("raise the open-file limit to %d: %w", r.Max, err)
		}
	}
	return openFileLimit(), nil
}

// remoteHost is the IP of a remote address, or the whole address when it
// has no port (a unix socket, a test).
func remoteHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// connLimiter caps the connections open at once, in all and per remote
// address. It is the listener: a connection over a cap is closed as soon
// as it is accepted, so one client cannot take the descriptors everyone
// else and the store need.
type connLimiter struct {
	net.Listener
	max, perAddr int
	refused      func()

	mu     sync.Mutex
	n      int
	byAddr map[string]int
}

func newConnLimiter(ln net.Listener, max, perAddr int, refused func()) *connLimiter {
	if perAddr > max {
		perAddr = max
	}
	return &connLimiter{Listener: ln, max: max, perAddr: perAddr, refused: refused, byAddr: map[string]int{}}
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := remoteHost(c.RemoteAddr().String())
		if l.take(host) {
			return &limitedConn{Conn: c, release: func() { l.give(host) }}, nil
		}
		_ = c.Close()
		l.refused()
	}
}

func (l *connLimiter) take(host string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= l.max || l.byAddr[host] >= l.perAddr {
		return false
	}
	l.n++
	l.byAddr[host]++
	return true
}

func (l *connLimiter) give(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.byAddr[host]--; l.byAddr[host] <= 0 {
		delete(l.byAddr, host)
	}
}

// limitedConn gives its place back once, when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// tunnelLimiter caps the tunnels open at once: per user, per remote
// address, and in all (what the open-file limit allows).
type tunnelLimiter struct {
	perUser, perAddr, max int

	mu     sync.Mutex
	n      int
	byUser map[int64]int
	byAddr map[string]int
}

func newTunnelLimiter(perUser, perAddr, max int) *tunnelLimiter {
	return &tunnelLimiter{perUser: perUser, perAddr: perAddr, max: max, byUser: map[int64]int{}, byAddr: map[string]int{}}
}

// acquire takes a place for a tunnel of the user from host, or says which
// cap it would pass. release gives the place back; call it once.
func (l *tunnelLimiter) acquire(user int64, host string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.byUser[user] >= l.perUser:
		return nil, httpapi.Errorf(http.StatusTooManyRequests,
			"you already have %d shells open, the most one user may have at once; close one, or ask an administrator to raise max_tunnels_per_user", l.perUser)
	case l.byAddr[host] >= l.perAddr:
		return nil, httpapi.Errorf(http.StatusTooManyRequests,
			"%d shells are already open from your address %s, the most one address may have at once; close one, or ask an administrator to raise max_tunnels_per_address", l.perAddr, host)
	case l.n >= l.max:
		return nil, httpapi.Errorf(http.StatusServiceUnavailable,
			"the server has %d shells open, as many as its open-file limit leaves room for; try again later, or ask an administrator to raise the server's open-file limit (LimitNOFILE)", l.max)
	}
	l.n++
	l.byUser[user]++
	l.byAddr[host]++
	var once sync.Once
	return func() { once.Do(func() { l.release(user, host) }) }, nil
}

func (l *tunnelLimiter) release(user int64, host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.byUser[user]--; l.byUser[user] <= 0 {
		delete(l.byUser, user)
	}
	if l.byAddr[host]--; l.byAddr[host] <= 0 {
		delete(l.byAddr, host)
	}
}

// bearerToken reads an Authorization header of the Bearer scheme, whose
// name is case-insensitive (RFC 9110 11.1), followed by one or more spaces
// and a token68 (RFC 6750 2.1).
func bearerToken(header string) (string, bool) {
	scheme, rest, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token := strings.TrimLeft(rest, " ")
	if token == "" || strings.ContainsAny(token, " \t") {
		return "", false
	}
	return token, true
}

func (cfg *Config) setFrontDoorDefaults() {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout}, {&cfg.ReadTimeout, DefaultReadTimeout}, {&cfg.IdleTimeout, DefaultIdleTimeout}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	for _, n := range []struct {
		v   *int
		def int
	}{
		{&cfg.MaxTunnelsPerUser, DefaultMaxTunnelsPerUser},
		{&cfg.MaxTunnelsPerAddress, DefaultMaxTunnelsPerAddress},
		{&cfg.MaxConnsPerAddress, DefaultMaxConnsPerAddress},
		{&cfg.OpenFileLimit, openFileLimit()},
	} {
		if *n.v <= 0 {
			*n.v = n.def
		}
	}
}
