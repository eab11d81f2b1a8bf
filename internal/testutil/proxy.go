package testutil

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy a test controls, standing for the network between
// two parts (a CLI and a server, a replica and its database, a load
// balancer in front of replicas). Cut drops every connection through it
// and refuses new ones until Restore; each accepted connection goes to the
// next target, in turn, that accepts a dial.
type Proxy struct {
	Addr string // where to connect: 127.0.0.1:PORT

	ln      net.Listener
	mu      sync.Mutex
	targets []string
	next    int
	cut     bool
	conns   map[net.Conn]bool // open ends; true: a client's
	wg      sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to targets; it
// stops when the test ends.
func NewProxy(t testing.TB, targets ...string) *Proxy {
	t.Helper()
	return NewProxyOn(t, "127.0.0.1:0", targets...)
}

// NewProxyOn is NewProxy listening on listen (host:port, port 0 for a free
// one): a node's address, for instance, which Pods of the Kubernetes test
// cluster reach while the host's loopback is out of their sight.
func NewProxyOn(t testing.TB, listen string, targets ...string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, targets: targets, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// SetTargets replaces where new connections go; open ones stay.
func (p *Proxy) SetTargets(targets ...string) {
	p.mu.Lock()
	p.targets, p.next = targets, 0
	p.mu.Unlock()
}

// Cut closes every open connection and refuses new ones (they are
// accepted and closed at once) until Restore. It returns how many
// connections through the proxy it cut.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	n := 0
	for c, client := range p.conns {
		c.Close()
		delete(p.conns, c)
		if client {
			n++
		}
	}
	return n
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Close stops the proxy and closes what goes through it.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.serve(c) }()
	}
}

// track registers c, a client's end or a target's, unless the proxy is
// cut; false means c was closed.
func (p *Proxy) track(c net.Conn, client bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		c.Close()
		return false
	}
	p.conns[c] = client
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// dial tries each target once, starting with the next in turn.
func (p *Proxy) dial() (net.Conn, error) {
	p.mu.Lock()
	targets, start := p.targets, p.next
	p.next++
	p.mu.Unlock()
	err := errors.New("proxy: no targets")
	for i := range targets {
		var c net.Conn
		if c, err = net.Dial("tcp", targets[(start+i)%len(targets)]); err == nil {
			return c, nil
		}
	}
	return nil, err
}

func (p *Proxy) serve(client net.Conn) {
	if !p.track(client, true) {
		return
	}
	defer p.untrack(client)
	server, err := p.dial()
	if err != nil {
		return
	}
	if !p.track(server, false) {
		return
	}
	defer p.untrack(server)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Half-close so that a peer's EOF reaches the other side.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}
