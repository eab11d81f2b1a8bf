package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// copyBufferSize matches the SSH channel's largest packets, so bulk output
// crosses the broker in few, large WebSocket messages.
const copyBufferSize = 64 << 10

// connectSession upgrades to a WebSocket and pipes it to the session's
// agent. The connection counts as one attachment for as long as it lasts.
func (a *API) connectSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	sess, err := a.sessionFor(r, caller, authz.AttachSession, "only the session's owner can open a shell in it")
	if err != nil {
		return err
	}
	if sess.State != sdk.StateRunning {
		return errSessionNotRunning(sess.ID)
	}
	if err := a.s.mayAttach(r.Context(), caller, sess); err != nil {
		return err
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return httpapi.Errorf(http.StatusUpgradeRequired, "this endpoint carries a shell over a WebSocket; connect with `devgpu shell --attach %s`", sess.ID)
	}
	// Close waits for the tunnel (owned.go), and a closing server takes none.
	if !a.s.enter() {
		return httpapi.Errorf(http.StatusServiceUnavailable, "the server is shutting down; connect again in a moment")
	}
	defer a.s.leave()
	release, err := a.s.tunnels.acquire(caller.ID, remoteHost(r.RemoteAddr))
	if err != nil {
		return err
	}
	defer release()
	agentConn, err := a.s.rt.Connect(r.Context(), sess.ID)
	if errors.Is(err, runtime.ErrNotFound) {
		return errSessionNotRunning(sess.ID)
	}
	if err != nil {
		return &httpapi.Error{Status: http.StatusBadGateway, Msg: "cannot reach the session's agent; try again, or start a new session", Err: err}
	}
	if err := agent.WritePreamble(agentConn, a.s.agentSecret(sess.ID)); err != nil {
		agentConn.Close()
		return &httpapi.Error{Status: http.StatusBadGateway, Msg: "cannot reach the session's agent; try again, or start a new session", Err: err}
	}
	attachment, err := a.s.attach(r.Context(), sess.ID)
	if err != nil {
		agentConn.Close()
		return err
	}
	ctx, cancel := context.WithCancel(a.s.ctx)
	defer cancel()
	// The client names its attachment by this random id, valid only in
	// this session; cancel cuts the tunnel when its user loses access.
	public := a.s.openAttachment(attachment, sess, cancel)
	defer a.s.closeAttachment(public)
	w.Header().Set(sdk.AttachmentHeader, public)
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		// Accept has answered the client already.
		agentConn.Close()
		a.s.detach(r.Context(), sess.ID, attachment, false)
		return nil
	}
	pinging := make(chan struct{}) // the handler owns the keepalive
	go func() { defer close(pinging); keepalive(ctx, ws, a.s.cfg.PingInterval) }()
	defer func() { cancel(); <-pinging }()
	first := &firstRead{Conn: agentConn, seen: func() { a.s.firstByte(sess.ID) }}
	end := pipe(websocket.NetConn(ctx, ws, websocket.MessageBinary), first)
	a.log.Debug("tunnel ended", "session_id", sess.ID, "attachment", attachment, "end", [...]string{"client closed", "client vanished", "agent closed"}[end])
	// A shell that announced its end left cleanly whatever the connection
	// did last: a close frame can be lost when the client exits at once.
	leaving := a.s.takeLeaving(attachment)
	switch {
	case end == clientClosed || leaving:
		a.s.detach(ctx, sess.ID, attachment, true)
	case end == clientVanished:
		a.s.detach(ctx, sess.ID, attachment, false)
	default: // agentClosed
		// An agent hangs up after the client's SSH disconnect (OpenSSH sends
		// one), which is a clean end; or it died. The runtime tells which.
		alive, err := a.s.stillAlive(ctx, sess.ID)
		if err != nil {
			a.log.Error("ask the runtime about a session", "session_id", sess.ID, "err", err)
		}
		a.s.detach(ctx, sess.ID, attachment, alive)
		if !alive {
			if err := a.s.checkLiveness(ctx); err != nil {
				a.log.Error("liveness check", "err", err)
			}
		}
	}
	return nil
}

// pipeEnd says which side ended a tunnel, and how.
type pipeEnd int

const (
	clientClosed   pipeEnd = iota // a WebSocket close frame: the shell closed
	clientVanished                // the connection broke or pings went unanswered
	agentClosed                   // the agent's side ended first
)

// pipe copies both ways until either side ends.
func pipe(client, agentConn net.Conn) pipeEnd {
	agentEnded := make(chan struct{}) // the agent's side ended the stream
	agentDone := make(chan struct{})  // and the client has been told
	go func() {
		defer close(agentDone)
		if from, _ := copyStream(client, agentConn); from {
			close(agentEnded)
		}
		// Tell the client with a normal close, if it is still there.
		_ = client.Close()
	}()
	fromClient, err := copyStream(agentConn, client)
	select {
	case <-agentEnded:
		<-agentDone
		return agentClosed
	default:
	}
	agentConn.Close()
	<-agentDone
	switch {
	case !fromClient:
		return agentClosed // writing to the agent failed
	case err == nil:
		// NetConn turns a normal close frame into io.EOF: the shell closed.
		return clientClosed
	default:
		return clientVanished
	}
}

// copyStream copies src to dst until one fails. It reports whether src
// ended it (with its error, nil for EOF) rather than a failed write to dst:
// a write to a client that is closing must not count as the agent leaving.
func copyStream(dst io.Writer, src io.Reader) (srcEnded bool, err error) {
	buf := make([]byte, copyBufferSize)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false, werr
			}
		}
		if rerr == io.EOF {
			return true, nil
		}
		if rerr != nil {
			return true, rerr
		}
	}
}

// keepalive pings the client so that one that vanished without closing
// (a network cut) is noticed; closing the socket ends the pipe.
func keepalive(ctx context.Context, ws *websocket.Conn, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pingCtx, cancel := context.WithTimeout(ctx, interval)
		err := ws.Ping(pingCtx)
		cancel()
		if err != nil {
			_ = ws.CloseNow()
			return
		}
	}
}

// firstRead calls seen once, at the first byte read from the agent.
type firstRead struct {
	net.Conn
	seen func()
	done bool
}

func (f *firstRead) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if n > 0 && !f.done {
		f.done = true
		f.seen()
	}
	return n, err
}
