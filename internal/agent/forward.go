package agent

import (
	"context"
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
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		s.log.Debug("direct-tcpip dial failed", "addr", addr, "err", err)
		_ = nc.Reject(ssh.ConnectionFailed, "connect to "+addr+" in the session: "+err.Error())
		return
	}
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
