package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
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
	return a.openShell(w, r, caller, tunnelShell, func(sh *openedShell) {
		a.serveTunnel(sh.ctx, sh.ws, sh.agent, sh.sess.ID, sh.attachment)
	})
}

// shellKind is a kind of attachment: the live view names it (sdk.LiveAttachment).
type shellKind struct {
	name string
	// notUpgrade tells a request that is no WebSocket upgrade how to
	// connect; %s is the session's id.
	notUpgrade string
	// page: a web page's WebSocket, whose Origin the handler checked
	// against the console's (consoleOrigin) before openShell, and which
	// cannot read an HTTP answer to its upgrade: refusals once the
	// upgrade is known to be asked for are closes (refuseInWebSocket).
	page bool
}

var (
	// tunnelShell: /connect, the tunnel of devgpu shell, ssh and the IDEs.
	tunnelShell = shellKind{"shell", "this endpoint carries a shell over a WebSocket; connect with `devgpu shell --attach %s`", false}
	// terminalShell: /terminal, the web console's terminal (terminal.go).
	terminalShell = shellKind{"terminal", "this endpoint carries a terminal over a WebSocket; open session %s's terminal from the web console", true}
)

// openedShell is an attachment admitted and connected: the client's
// WebSocket and the stream to the session's agent.
type openedShell struct {
	sess       store.Session
	attachment int64 // the store's attachment id; serve records its detach
	ws         *websocket.Conn
	agent      net.Conn // notes the session's first byte (firstRead)
	// ctx ends when the server shuts down or cuts the shell (its user
	// lost access, or the session ended).
	ctx context.Context
}

// openShell admits an attachment to the session as every shell is
// admitted (the caller's right to attach, a running session, membership,
// the server's and the caller's shell limits), connects to the session's
// agent, records the attachment, upgrades to a WebSocket and keeps it
// pinged. serve owns the shell while it runs and must record its detach;
// when it returns, everything is released.
func (a *API) openShell(w http.ResponseWriter, r *http.Request, caller store.User, kind shellKind, serve func(*openedShell)) (err error) {
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
		return httpapi.Errorf(http.StatusUpgradeRequired, kind.notUpgrade, sess.ID)
	}
	if kind.page {
		defer func() {
			if err != nil {
				err = a.refuseInWebSocket(w, r, err)
			}
		}()
	}
	// Close waits for the shell (owned.go), and a closing server takes none.
	if !a.s.enter() {
		return httpapi.Errorf(http.StatusServiceUnavailable, "the server is shutting down; connect again in a moment")
	}
	defer a.s.leave()
	release, err := a.s.tunnels.acquire(caller.ID, remoteHost(r.RemoteAddr))
	if err != nil {
		return err
	}
	defer release()
	agentConn, err := a.s.backendOf(sess).Runtime.Connect(r.Context(), sess.ID)
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
	attachment, err := a.s.attach(r.Context(), sess)
	if err != nil {
		agentConn.Close()
		return err
	}
	ctx, cancel := context.WithCancel(a.s.ctx)
	defer cancel()
	// The client names its attachment by this random id, valid only in
	// this session; cancel cuts the shell when its user loses access.
	public := a.s.openAttachment(attachment, sess, kind.name, cancel)
	defer a.s.closeAttachment(public)
	w.Header().Set(sdk.AttachmentHeader, public)
	// Accept's own Origin check compares hosts with the request's Host,
	// which a proxy may rewrite: a page's was checked already.
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled, InsecureSkipVerify: kind.page})
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
	serve(&openedShell{sess: sess, attachment: attachment, ws: ws, agent: first, ctx: ctx})
	return nil
}

// verdictWait bounds how long a tunnel whose agent's side ended waits for
// the client's verdict (SignalLeave or a close) before counting the client
// as lost. Clients answer at once, ssh-proxy within sshExitWait.
const verdictWait = 10 * time.Second

// serveTunnel carries the stream between the client's WebSocket and the
// agent until the tunnel's verdict is known (tunnelend.go), then records
// the attachment's end and closes the tunnel. A shell that left is
// recorded before the WebSocket closes, so that a client waiting for the
// close (sdk.Tunnel.Leave) knows that its session has ended when this was
// its last shell. ctx ends when the server shuts down or cuts the tunnel.
func (a *API) serveTunnel(ctx context.Context, ws *websocket.Conn, agentConn net.Conn, sessionID string, attachment int64) {
	ws.SetReadLimit(-1)                 // messages are streamed, never held whole
	events := make(chan tunnelEvent, 3) // each goroutine sends at most what fits
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); fromClient(ws, agentConn, events) }()
	var decided atomic.Bool // once set, the agent's end is no news for the client
	go func() { defer wg.Done(); toClient(ws, agentConn, events, &decided) }()

	var end tunnelEnd
	var waitVerdict <-chan time.Time
	var last tunnelEvent
	for end.verdict == undecided {
		select {
		case last = <-events:
		case <-ctx.Done():
			last = serverEnded
		case <-waitVerdict:
			last = clientLost
		}
		end.observe(last)
		if last == agentEnded && waitVerdict == nil {
			t := time.NewTimer(verdictWait)
			defer t.Stop()
			waitVerdict = t.C
		}
	}
	decided.Store(true)
	agentConn.Close()
	a.log.Debug("tunnel ended", "session_id", sessionID, "attachment", attachment, "event", last.String(), "agent_ended", end.agentEnded, "verdict", end.verdict.String())
	a.s.detach(ctx, sessionID, attachment, end.verdict == shellClosed)
	switch last {
	case clientLeft:
		_ = ws.Close(websocket.StatusNormalClosure, "closed")
	case serverEnded:
		_ = ws.Close(websocket.StatusGoingAway, "the server ended the tunnel")
	default: // the client closed it, or is gone
		_ = ws.CloseNow()
	}
	wg.Wait()
	if end.verdict == clientVanished && end.agentEnded {
		// The agent may have died: notice it now rather than at the next
		// liveness round (on the leader, which runs that round).
		if err := a.s.asLeader(a.s.checkLiveness)(context.WithoutCancel(ctx)); err != nil {
			a.log.Error("liveness check", "err", err)
		}
	}
}

// fromClient copies the client's binary messages to the agent and reports
// the client's SignalLeave and how its WebSocket ended. Once the agent's
// side is gone, the client's data is discarded, but its signals still
// count.
func fromClient(ws *websocket.Conn, agentConn net.Conn, events chan<- tunnelEvent) {
	buf := make([]byte, copyBufferSize)
	agentGone, left := false, false
	for {
		typ, r, err := ws.Reader(context.Background())
		if err != nil {
			if websocket.CloseStatus(err) != -1 {
				events <- clientClosed
			} else {
				events <- clientLost
			}
			return
		}
		if typ == websocket.MessageText {
			b, err := io.ReadAll(io.LimitReader(r, maxSignal))
			if err == nil {
				_, err = io.Copy(io.Discard, r)
			}
			if err == nil && string(b) == sdk.SignalLeave && !left {
				left = true
				events <- clientLeft
			}
			continue // an error ends the next Reader too
		}
		if agentGone {
			_, _ = io.Copy(io.Discard, r)
			continue
		}
		if srcEnded, _ := copyStream(agentConn, r, buf); !srcEnded {
			agentGone = true // toClient reports it
			_, _ = io.Copy(io.Discard, r)
		}
	}
}

// maxSignal bounds the text messages read as signals.
const maxSignal = 64

// toClient copies the agent's stream to the client until either fails.
// When the agent's side ended, it tells the client (SignalAgentEnded) and
// reports agentEnded.
func toClient(ws *websocket.Conn, agentConn net.Conn, events chan<- tunnelEvent, decided *atomic.Bool) {
	w := wsWriter{ws}
	if srcEnded, _ := copyStream(w, agentConn, make([]byte, copyBufferSize)); !srcEnded || decided.Load() {
		return // the client's side failed (fromClient reports it), or the end is decided
	}
	_ = ws.Write(context.Background(), websocket.MessageText, []byte(sdk.SignalAgentEnded))
	events <- agentEnded
}

// wsWriter writes each Write as one binary message.
type wsWriter struct{ ws *websocket.Conn }

func (w wsWriter) Write(p []byte) (int, error) {
	if err := w.ws.Write(context.Background(), websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// copyStream copies src to dst until one fails. It reports whether src
// ended it (with its error, nil for EOF) rather than a failed write to dst:
// a write to a client that is closing must not count as the agent leaving.
func copyStream(dst io.Writer, src io.Reader, buf []byte) (srcEnded bool, err error) {
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
