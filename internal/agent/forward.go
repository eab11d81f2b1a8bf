package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// dialTimeout bounds a "direct-tcpip" channel's dial inside the session.
const dialTimeout = 10 * time.Second

// directTCPIP is the payload of a "direct-tcpip" channel open (RFC 4254 7.2).
type directTCPIP struct {
	Host       string
	Port       uint32
	OriginHost string
	OriginPort uint32
}

// serveDirectTCPIP forwards a client's connection (ssh -L, VS Code
// Remote-SSH, `devgpu port-forward`) to a TCP address dialed from inside the
// session, so it sees the session's network (its namespace and policy) and
// reaches servers listening on the session's 127.0.0.1. Every chunk either
// way is user activity.
func (s *server) serveDirectTCPIP(ctx context.Context, nc ssh.NewChannel) {
	var m directTCPIP
	if err := ssh.Unmarshal(nc.ExtraData(), &m); err != nil || m.Port > 65535 {
		_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	addr := net.JoinHostPort(m.Host, strconv.Itoa(int(m.Port)))
	origin := net.JoinHostPort(m.OriginHost, strconv.Itoa(int(m.OriginPort)))
	if s.forwards.dialedBySelf(ctx, origin) {
		// The client's listener accepted a connection this agent dialed:
		// the session shares the client's network (the local runtime) and
		// the target is the forwarding's own local end, so every connection
		// would loop back into it.
		s.log.Debug("direct-tcpip loop refused", "addr", addr, "origin", origin)
		_ = nc.Reject(ssh.ConnectionFailed, fmt.Sprintf("port %d in the session is the forwarding's own local port: "+
			"the session shares this machine's network, so connect to 127.0.0.1:%d directly, or forward another local port (devgpu port-forward SESSION 0:%d)",
			m.Port, m.Port, m.Port))
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	done := s.forwards.dialing()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		done(nil)
		s.log.Debug("direct-tcpip dial failed", "addr", addr, "err", err)
		_ = nc.Reject(ssh.ConnectionFailed, "connect to "+addr+" in the session: "+err.Error())
		return
	}
	done(c)
	defer s.forwards.forget(c)
	defer c.Close()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	s.activity.touch()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	tcp := c.(*net.TCPConn)
	rw := activityRW{ch, &s.activity}
	var wg sync.WaitGroup
	wg.Go(func() {
		// Client to server; the client's EOF half-closes toward the server.
		_, _ = io.Copy(tcp, rw)
		_ = tcp.CloseWrite()
	})
	// Server to client; then EOF on the channel.
	_, _ = io.Copy(rw, tcp)
	_ = ch.CloseWrite()
	wg.Wait()
}

// forwards knows the local addresses of the connections that direct-tcpip
// dialed, so that a forwarding whose local end is its own target (the
// client listens on the port it forwards to, on the same network) is
// refused instead of connecting to itself over and over.
type forwards struct {
	mu      sync.Mutex
	pending int                 // dials in progress
	changed chan struct{}       // closed when pending or local changes
	local   map[string]struct{} // local addresses of dialed connections
}

// dialing records a dial in progress; done records its connection (nil
// when the dial failed).
func (f *forwards) dialing() (done func(net.Conn)) {
	f.mu.Lock()
	f.pending++
	f.mu.Unlock()
	return func(c net.Conn) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.pending--
		if c != nil {
			if f.local == nil {
				f.local = map[string]struct{}{}
			}
			f.local[c.LocalAddr().String()] = struct{}{}
		}
		f.notify()
	}
}

func (f *forwards) forget(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.local, c.LocalAddr().String())
}

// notify wakes dialedBySelf's waiters; f.mu is held.
func (f *forwards) notify() {
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
}

// dialedBySelf reports whether origin, a forwarded connection's
// originator, is the local end of a connection this agent dialed. A
// connection can reach the client's listener before its dial has returned
// here, so an origin on loopback waits for the dials in progress.
func (f *forwards) dialedBySelf(ctx context.Context, origin string) bool {
	host, _, err := net.SplitHostPort(origin)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if _, ok := f.local[origin]; ok {
			return true
		}
		if f.pending == 0 {
			return false
		}
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
		}
		f.mu.Lock()
		if ctx.Err() != nil {
			return false
		}
	}
}
