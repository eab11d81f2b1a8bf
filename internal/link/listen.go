package link

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
)

// AgentConfig is how an agent links to the control plane.
type AgentConfig struct {
	// URL is the control plane's link endpoint (https:// or wss://); one
	// without a path gets Path.
	URL string
	// SessionID and Credential identify and authenticate the agent; the
	// credential is never logged.
	SessionID, Credential string
	// TLS verifies the control plane; nil means the system's roots.
	TLS *tls.Config
	// Report is sent with every link.
	Report Report
	// Log hears about links made and lost; nil discards.
	Log *slog.Logger
}

const (
	// The agent redials a lost link after a backoff that starts at
	// minBackoff and doubles up to maxBackoff, each wait jittered down to
	// half, so that the agents of a restarted control plane do not return
	// in lockstep.
	minBackoff = 250 * time.Millisecond
	maxBackoff = 15 * time.Second
)

// Listen links to the control plane and returns a listener whose Accept
// yields the streams the control plane opens. It keeps the link up by
// itself, redialling with backoff whenever it drops, until ctx is done or
// the listener is closed. Accept returns an error wrapping ErrRefused when
// the control plane refuses the credential, and one wrapping ErrStopped
// when it stopped the session; both also match net.ErrClosed.
func Listen(ctx context.Context, cfg AgentConfig) net.Listener {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &listener{
		cfg:    cfg,
		cancel: cancel,
		conns:  make(chan net.Conn),
		done:   make(chan struct{}),
		ended:  make(chan struct{}),
	}
	go l.run(ctx)
	return l
}

// listener is the agent's end of the link.
type listener struct {
	cfg    AgentConfig
	cancel context.CancelFunc
	conns  chan net.Conn // streams the control plane opened
	done   chan struct{} // closed by stop
	ended  chan struct{} // closed when run has returned
	once   sync.Once
	err    error // why Accept fails, set by stop before done closes
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// Close stops linking, ends the link and waits until it is down. Streams
// already accepted end with it.
func (l *listener) Close() error {
	l.stop(net.ErrClosed)
	l.cancel()
	<-l.ended
	return nil
}

func (l *listener) Addr() net.Addr {
	if u, err := url.Parse(l.cfg.URL); err == nil {
		return linkAddr(u.Redacted())
	}
	return linkAddr("control-plane")
}

// stop makes Accept return err from now on.
func (l *listener) stop(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

// linkAddr names the control plane's end.
type linkAddr string

func (a linkAddr) Network() string { return "devgpu-link" }
func (a linkAddr) String() string  { return string(a) }

// run links, serves the link until it drops, and links again, until ctx is
// done or the control plane says not to.
func (l *listener) run(ctx context.Context) {
	defer close(l.ended)
	defer l.cancel()
	u, err := linkURL(l.cfg.URL)
	if err != nil {
		l.stop(&endedError{msg: err.Error(), cause: ErrRefused})
		return
	}
	if u.Scheme == "http" || u.Scheme == "ws" {
		l.cfg.Log.Warn("agent link is not encrypted: the session's credential and streams cross the network in the clear; use an https URL", "url", u.Redacted())
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyFromEnvironment,
		TLSClientConfig: l.cfg.TLS,
	}}
	defer client.CloseIdleConnections()
	backoff := minBackoff
	for {
		linked, err := l.linkOnce(ctx, client, u)
		if ctx.Err() != nil {
			l.stop(net.ErrClosed)
			return
		}
		var ended *endedError
		if errors.As(err, &ended) {
			if errors.Is(err, ErrStopped) {
				l.cfg.Log.Info("agent link ended: the control plane stopped the session")
			} else {
				l.cfg.Log.Error("agent link ended for good", "err", err)
			}
			l.stop(err)
			return
		}
		if linked {
			backoff = minBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		l.cfg.Log.Warn("agent link down, linking again", "err", err, "retry_in", wait)
		backoff = min(2*backoff, maxBackoff)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			l.stop(net.ErrClosed)
			return
		}
	}
}

// linkURL checks the control plane's URL and gives it the default path.
func linkURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("the agent link URL %q is not a URL; give --link as https://HOST[:PORT]%s", raw, Path)
	}
	switch u.Scheme {
	case "https", "wss", "http", "ws":
	default:
		return nil, fmt.Errorf("the agent link URL %q has scheme %q; give --link as https://HOST[:PORT]%s", raw, u.Scheme, Path)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = Path
	}
	return u, nil
}

// linkOnce dials the control plane and serves the link until it drops. It
// reports whether the link was made, and why it ended: an *endedError when
// the agent must not link again.
func (l *listener) linkOnce(ctx context.Context, client *http.Client, u *url.URL) (linked bool, err error) {
	report, err := json.Marshal(l.cfg.Report)
	if err != nil {
		return false, &endedError{msg: fmt.Sprintf("encode the agent's report: %v", err), cause: ErrRefused}
	}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+l.cfg.Credential)
	h.Set(headerSession, l.cfg.SessionID)
	h.Set(headerReport, string(report))
	dialCtx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	ws, resp, err := websocket.Dial(dialCtx, u.String(), &websocket.DialOptions{
		HTTPClient:      client,
		HTTPHeader:      h,
		CompressionMode: websocket.CompressionDisabled,
	})
	cancel()
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusBadRequest) {
			return false, &endedError{msg: fmt.Sprintf("%v (HTTP %d): %s", ErrRefused, resp.StatusCode, responseText(resp)), cause: ErrRefused}
		}
		if resp != nil {
			return false, fmt.Errorf("link to %s: HTTP %d: %s", u.Redacted(), resp.StatusCode, responseText(resp))
		}
		return false, fmt.Errorf("link to %s: %w", u.Redacted(), err)
	}
	conn := &recordingConn{Conn: websocket.NetConn(ctx, ws, websocket.MessageBinary)}
	mux, err := yamux.Server(conn, yamuxConfig(keepAliveInterval, writeTimeout))
	if err != nil {
		ws.CloseNow()
		return false, fmt.Errorf("start the link's yamux session: %w", err)
	}
	l.cfg.Log.Info("agent linked to the control plane", "url", u.Redacted())
	defer context.AfterFunc(ctx, func() { mux.Close() })()
	for {
		stream, err := mux.AcceptStream()
		if err != nil {
			break
		}
		select {
		case l.conns <- stream:
		case <-ctx.Done():
			stream.Close()
		case <-l.done:
			stream.Close()
		}
	}
	mux.Close()
	ws.CloseNow()
	why := conn.readErr()
	if websocket.CloseStatus(why) == statusStopped {
		return true, &endedError{msg: ErrStopped.Error(), cause: ErrStopped}
	}
	if why == nil {
		why = errors.New("link closed")
	}
	return true, fmt.Errorf("link to %s lost: %w", u.Redacted(), why)
}

// responseText is the first line of a refused handshake's body: the hub's
// sentence saying why.
func responseText(resp *http.Response) string {
	if resp.Body == nil {
		return http.StatusText(resp.StatusCode)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	text, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if text == "" {
		return http.StatusText(resp.StatusCode)
	}
	return text
}

// recordingConn remembers the first error a read returned, which carries
// the close code the hub ended the link with.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	err error
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *recordingConn) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
