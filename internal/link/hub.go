package link

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"

	"github.com/devgpu/devgpu/internal/runtime"
)

// Hub is the control plane's end of every agent link: one link per
// session, the newest winning. Its methods are safe for concurrent use.
type Hub struct {
	log     *slog.Logger
	pending chan struct{} // a slot per agent in its handshake
	// keepAlive and writeTimeout: how often the hub pings each agent, and
	// how long it waits for an answer or a write before it drops the link
	// (tests shorten them).
	keepAlive, writeTimeout time.Duration

	// remotePoll is how often WaitLinked asks the remote whether another
	// replica holds the link (tests shorten it).
	remotePoll time.Duration

	mu      sync.Mutex
	verify  Verifier
	remote  Remote
	notify  func(sessionID string, linked bool)
	cas     [][]byte // PEM: CAs that signed the control plane's certificate
	links   map[string]*agentLink
	changed chan struct{} // closed and replaced when a link is added
	closed  bool
}

// agentLink is one agent's live link.
type agentLink struct {
	sessionID string
	report    Report
	ws        *websocket.Conn
	mux       *yamux.Session
	endOnce   sync.Once
}

// end closes the link, telling the agent why with a close code.
func (l *agentLink) end(code websocket.StatusCode, reason string) {
	l.endOnce.Do(func() {
		// Close waits for the agent's answer to the close frame, which
		// yamux's reader receives; the session closes after it.
		go func() {
			_ = l.ws.Close(code, reason)
			_ = l.mux.Close()
		}()
	})
}

const (
	// hubAcceptBacklog is how many streams the agent may have opened that
	// the hub has not yet closed (yamux resets any beyond it).
	hubAcceptBacklog = 4
	// maxAgentStreams is how many streams an agent may open on one link
	// before the hub ends the link: each closed stream may still hold up to
	// a window of data the agent sent until the agent closes its end, so an
	// agent that keeps opening them is cut off rather than served.
	maxAgentStreams = 8
)

// refuseStreams closes every stream the agent opens, at once (the control
// plane never serves them), and ends the link when the agent keeps opening
// them. It returns when the link ends.
func (l *agentLink) refuseStreams(log *slog.Logger) {
	for opened := 0; ; opened++ {
		stream, err := l.mux.AcceptStream()
		if err != nil {
			return
		}
		_ = stream.Close()
		if opened == 0 {
			log.Warn("agent link: the agent opened a stream, which the control plane does not serve; closed it")
		}
		if opened+1 >= maxAgentStreams {
			log.Warn("agent link ended: the agent keeps opening streams", "streams", opened+1)
			l.end(websocket.StatusPolicyViolation, "the agent opened streams the control plane does not serve")
			return
		}
	}
}

// NewHub returns a Hub that refuses every agent until SetVerifier.
func NewHub(log *slog.Logger) *Hub {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Hub{
		log:          log,
		pending:      make(chan struct{}, maxPending),
		keepAlive:    keepAliveInterval,
		writeTimeout: writeTimeout,
		remotePoll:   remotePoll,
		links:        map[string]*agentLink{},
		changed:      make(chan struct{}),
	}
}

// Verifier checks an agent's credential for a session. It returns ok false
// (and nil) when the credential is wrong or the session may not link (it
// ended, or never started): the hub answers 401 and the agent stops for
// good. It returns an error when it cannot tell now (the store did not
// answer): the hub answers 503 and the agent retries, so that a hiccup of
// the store does not end running sessions whose agents cannot be restarted.
type Verifier func(sessionID, credential string) (ok bool, err error)

// SetVerifier installs the check of an agent's credential for a session.
// It is called once per link attempt, before the WebSocket is accepted.
func (h *Hub) SetVerifier(verify Verifier) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.verify = verify
}

// Remote reaches the agents linked to other replicas of the control plane
// (several server processes share one store; an agent links to whichever
// one its connection reached).
type Remote interface {
	// Dial opens a stream to the session's agent through the replica that
	// holds its link. It fails with runtime.ErrNotFound when no other
	// replica holds one.
	Dial(ctx context.Context, sessionID string) (net.Conn, error)
	// Report returns what the session's agent reported to the replica
	// that holds its link, or runtime.ErrNotFound when none does.
	Report(ctx context.Context, sessionID string) (Report, error)
}

// SetRemote installs the way to agents linked elsewhere: Dial and
// WaitLinked fall back to it when the session has no link in this hub.
func (h *Hub) SetRemote(r Remote) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remote = r
}

// SetNotify installs a function told each time a session's link is
// established in this hub (linked true, after its verifier accepted it)
// and each time it ends here (false): ended, replaced by nothing, the
// session stopped or the hub closed. A link replaced by a newer one of the
// same session is not reported as ended. It is called in the hub's order
// with the hub's lock held, so that the last call for a session is its
// state: it must not block or call the hub.
func (h *Hub) SetNotify(notify func(sessionID string, linked bool)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notify = notify
}

// AddCA records the PEM certificate of a CA that signed the control
// plane's certificate, the one its agents are told to trust (a kube
// backend's link_ca_file, or the --dev CA). Replicas relaying to one
// another trust it too (CAs).
func (h *Hub) AddCA(pem []byte) {
	if len(pem) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cas = append(h.cas, pem)
}

// CAs returns the PEM certificates AddCA recorded.
func (h *Hub) CAs() [][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([][]byte(nil), h.cas...)
}

// told tells notify, if set; the caller holds h.mu.
func (h *Hub) told(sessionID string, linked bool) {
	if h.notify != nil {
		h.notify(sessionID, linked)
	}
}

// refuse answers an agent that cannot link with one sentence.
func refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, msg)
}

// ServeHTTP accepts an agent's link: a GET with the session's credential,
// upgraded to a WebSocket that carries the yamux session. It returns when
// the link ends.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		refuse(w, http.StatusMethodNotAllowed, "the agent link endpoint takes only GET requests that upgrade to a WebSocket.")
		return
	}
	select {
	case h.pending <- struct{}{}:
	default:
		refuse(w, http.StatusServiceUnavailable, "too many agents are linking at once; the agent retries by itself.")
		return
	}
	released := false
	release := func() {
		if !released {
			released = true
			<-h.pending
		}
	}
	defer release()

	sessionID := r.Header.Get(headerSession)
	credential, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	log := h.log.With("session_id", sessionID, "remote_addr", r.RemoteAddr)
	if sessionID == "" || !hasBearer || credential == "" {
		refuse(w, http.StatusUnauthorized, "an agent link needs the headers 'Authorization: Bearer <credential>' and '"+headerSession+": <session id>'; start the agent with --session and --link-credential-file.")
		return
	}
	h.mu.Lock()
	verify, closed := h.verify, h.closed
	h.mu.Unlock()
	if closed {
		refuse(w, http.StatusServiceUnavailable, "the control plane is shutting down; the agent retries by itself.")
		return
	}
	ok := false
	if verify != nil {
		var err error
		if ok, err = verify(sessionID, credential); err != nil {
			log.Warn("agent link deferred: its credential cannot be checked now", "err", err)
			refuse(w, http.StatusServiceUnavailable, "the control plane cannot check the link now; the agent retries.")
			return
		}
	}
	if !ok {
		// The verifier logged why; one line per refused request.
		refuse(w, http.StatusUnauthorized, fmt.Sprintf("the link credential is not valid for session %s, or the session is not running: give the agent the credential the control plane minted for this session.", sessionID))
		return
	}
	var report Report
	if raw := r.Header.Get(headerReport); raw != "" {
		if len(raw) > maxReportBytes {
			refuse(w, http.StatusBadRequest, fmt.Sprintf("the agent's %s header is longer than %d bytes; report fewer devices.", headerReport, maxReportBytes))
			return
		}
		if err := json.Unmarshal([]byte(raw), &report); err != nil {
			refuse(w, http.StatusBadRequest, fmt.Sprintf("the agent's %s header is not valid JSON (%v); use an agent of the same devgpu version as the server.", headerReport, err))
			return
		}
	}

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		log.Warn("agent link: websocket handshake failed", "err", err)
		return // Accept has answered
	}
	// The request's context ends when ServeHTTP returns, which is when the
	// link has ended.
	cfg := yamuxConfig(h.keepAlive, h.writeTimeout)
	// The control plane serves no streams the agent opens: a small backlog
	// bounds what an agent can pin with streams nobody accepted yet, and
	// refuseStreams closes those it does open.
	cfg.AcceptBacklog = hubAcceptBacklog
	mux, err := yamux.Client(websocket.NetConn(r.Context(), ws, websocket.MessageBinary), cfg)
	if err != nil {
		_ = ws.Close(websocket.StatusInternalError, "the control plane could not start the link")
		log.Error("agent link: start yamux", "err", err)
		return
	}
	release()

	l := &agentLink{sessionID: sessionID, report: report, ws: ws, mux: mux}
	go l.refuseStreams(log)
	if !h.add(l) {
		l.end(websocket.StatusGoingAway, "the control plane is shutting down")
	} else {
		log.Info("agent linked", "node", report.Node, "devices", report.Devices)
	}
	select {
	case <-mux.CloseChan():
	case <-r.Context().Done():
	}
	if h.remove(l) {
		log.Info("agent link lost")
	}
	l.end(websocket.StatusGoingAway, "the link ended")
	<-mux.CloseChan()
}

// add installs l as its session's link, ending the one it replaces. It
// reports false when the hub is closed.
func (h *Hub) add(l *agentLink) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	if old := h.links[l.sessionID]; old != nil {
		h.log.Info("agent link replaced by a newer one", "session_id", l.sessionID)
		old.end(websocket.StatusGoingAway, "replaced by a newer link of the same session")
	}
	h.links[l.sessionID] = l
	h.told(l.sessionID, true)
	close(h.changed)
	h.changed = make(chan struct{})
	return true
}

// remove drops l if it is still its session's link, and reports whether it was.
func (h *Hub) remove(l *agentLink) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.links[l.sessionID] != l {
		return false
	}
	delete(h.links, l.sessionID)
	h.told(l.sessionID, false)
	return true
}

// current returns the session's live link, or nil.
func (h *Hub) current(sessionID string) *agentLink {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.links[sessionID]
	if l != nil && l.mux.IsClosed() {
		return nil // ServeHTTP removes it in a moment
	}
	return l
}

// WaitLinked blocks until the session's agent has linked, here or (with
// a Remote) to another replica, or ctx is done, and returns what the agent
// reported. Another replica's link is looked for at once and then every
// remotePoll.
func (h *Hub) WaitLinked(ctx context.Context, sessionID string) (Report, error) {
	var poll *time.Ticker
	for checkRemote := true; ; {
		h.mu.Lock()
		l, changed, remote := h.links[sessionID], h.changed, h.remote
		h.mu.Unlock()
		if l != nil && !l.mux.IsClosed() {
			return l.report, nil
		}
		var polled <-chan time.Time
		if remote != nil {
			if checkRemote {
				report, err := remote.Report(ctx, sessionID)
				if err == nil {
					return report, nil
				}
				if !errors.Is(err, runtime.ErrNotFound) && ctx.Err() == nil {
					h.log.Debug("agent link: cannot ask the other replicas yet", "session_id", sessionID, "err", err)
				}
			}
			if poll == nil {
				poll = time.NewTicker(h.remotePoll)
				defer poll.Stop()
			}
			polled = poll.C
		}
		select {
		case <-changed:
			checkRemote = false
		case <-polled:
			checkRemote = true
		case <-ctx.Done():
			return Report{}, fmt.Errorf("wait for the agent of session %s to link: %w", sessionID, context.Cause(ctx))
		}
	}
}

// LocalReport returns what the session's agent reported, when it is linked
// to this hub now.
func (h *Hub) LocalReport(sessionID string) (Report, bool) {
	if l := h.current(sessionID); l != nil {
		return l.report, true
	}
	return Report{}, false
}

// LinkedSessions returns the sessions whose agents are linked to this hub
// now.
func (h *Hub) LinkedSessions() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.links))
	for id, l := range h.links {
		if !l.mux.IsClosed() {
			ids = append(ids, id)
		}
	}
	return ids
}

// Linked reports whether the session's agent is linked now.
func (h *Hub) Linked(sessionID string) bool {
	return h.current(sessionID) != nil
}

// Dial opens a new stream to the session's agent: over its link to this
// hub, or else through the Remote to the replica holding it. A session
// linked nowhere is runtime.ErrNotFound.
func (h *Hub) Dial(ctx context.Context, sessionID string) (net.Conn, error) {
	h.mu.Lock()
	remote := h.remote
	h.mu.Unlock()
	if remote == nil || h.current(sessionID) != nil {
		return h.DialLocal(ctx, sessionID)
	}
	return remote.Dial(ctx, sessionID)
}

// DialLocal opens a new stream to the session's agent over its link to
// this hub only, never through another replica (a relay serves with it, so
// that no stream goes round in a loop). A session not linked here is
// runtime.ErrNotFound.
func (h *Hub) DialLocal(ctx context.Context, sessionID string) (net.Conn, error) {
	l := h.current(sessionID)
	if l == nil {
		return nil, fmt.Errorf("connect to session %s: its agent is not linked: %w", sessionID, runtime.ErrNotFound)
	}
	type opened struct {
		conn net.Conn
		err  error
	}
	// OpenStream blocks only while too many streams wait for the agent's
	// acknowledgement; honour ctx meanwhile.
	done := make(chan opened, 1)
	go func() {
		c, err := l.mux.OpenStream()
		done <- opened{c, err}
	}()
	select {
	case o := <-done:
		if o.err != nil {
			if errors.Is(o.err, yamux.ErrSessionShutdown) || errors.Is(o.err, yamux.ErrRemoteGoAway) {
				return nil, fmt.Errorf("connect to session %s: its link just ended: %w", sessionID, runtime.ErrNotFound)
			}
			return nil, fmt.Errorf("connect to session %s over its link: %w", sessionID, o.err)
		}
		return o.conn, nil
	case <-ctx.Done():
		go func() {
			if o := <-done; o.conn != nil {
				o.conn.Close()
			}
		}()
		return nil, fmt.Errorf("connect to session %s over its link: %w", sessionID, ctx.Err())
	}
}

// Forget ends the session's link and tells the agent the session was
// stopped, so that it does not link again.
func (h *Hub) Forget(sessionID string) {
	h.mu.Lock()
	l := h.links[sessionID]
	delete(h.links, sessionID)
	if l != nil {
		h.told(sessionID, false)
	}
	h.mu.Unlock()
	if l != nil {
		h.log.Info("agent link ended: session stopped", "session_id", sessionID)
		l.end(statusStopped, "session stopped")
	}
}

// Close ends every link and refuses new ones, for the control plane's
// shutdown. Agents link again to the next control plane process.
func (h *Hub) Close() {
	h.mu.Lock()
	links := h.links
	h.links = map[string]*agentLink{}
	h.closed = true
	for id := range links {
		h.told(id, false)
	}
	h.mu.Unlock()
	for _, l := range links {
		l.end(websocket.StatusGoingAway, "the control plane is shutting down")
	}
}
