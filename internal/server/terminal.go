package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// The web console's terminal (sdk/terminal.go): the browser's WebSocket
// is admitted and counted as one attachment exactly as a `devgpu shell`
// tunnel is (openShell), and the server is the SSH client of the
// session's agent on the browser's behalf, as internal/cli/shell.go and
// reconnect.go are on a terminal: a kept shell, resumed after a dropped
// connection. How the WebSocket ends decides the attachment's verdict
// (tunnelend.go): a shell that exited, the browser's TerminalLeave and a
// close frame saying that the tab went away close it; anything else
// (a broken connection, unanswered pings, an agent that hung up without
// an exit, a server that shuts down or cuts the terminal) vanishes, and
// the agent keeps the shell for a resume within the detach grace. A
// terminal closed on purpose also hangs up its shell (SIGHUP), as closing
// a terminal window does: what ran in it stops, rather than going on
// producing output that counts as the session's activity.
//
// The page cannot see WebSocket pings, nor read an HTTP answer to its
// upgrade: the server sends it keepalive messages, and refuses a request
// known to ask for a WebSocket by accepting it and closing it at once
// with TerminalCloseRefused plus the status (refuseInWebSocket).

const (
	// terminalType is the TERM of the browser's terminal, xterm.js.
	terminalType = "xterm-256color"
	// defaultCols and defaultRows size a terminal that did not say.
	defaultCols, defaultRows = 80, 24
	// maxTerminalSide bounds a terminal's columns and rows: a PTY holds
	// them in 16 bits, and no screen shows more.
	maxTerminalSide = 1000
	// maxTerminalText bounds a text message from the browser: a larger
	// one is no TerminalMessage, and closes the WebSocket.
	maxTerminalText = 4 << 10
	// shellSetupWait bounds the SSH handshake with the agent and the
	// shell's start.
	shellSetupWait = 30 * time.Second
	// maxCloseReason is the most bytes a WebSocket close reason holds
	// (RFC 6455 5.5: a control frame's 125, less the code's 2).
	maxCloseReason = 123
)

// terminalModes are the modes the terminal starts with, as the CLI's
// (internal/cli/shell.go).
var terminalModes = ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}

// terminalRequest is what the terminal's query asks for.
type terminalRequest struct {
	size   sdk.TerminalSize
	resume string // the kept shell's token; empty: a new shell
	offset uint64 // with resume: the output bytes the browser has shown
}

// terminal serves GET /api/v1/sessions/{id}/terminal.
func (a *API) terminal(w http.ResponseWriter, r *http.Request, caller store.User) error {
	req, err := parseTerminalRequest(r.URL.Query())
	if err != nil {
		return err
	}
	// A page of another origin is refused here, before it touches the
	// session, by the rule the console's own requests follow
	// (consoleOrigin), which openShell then leaves to stand
	// (shellKind.page).
	if origin := r.Header.Get("Origin"); origin != "" && !strings.EqualFold(origin, a.s.consoleOrigin(r)) {
		return httpapi.Errorf(http.StatusForbidden, "a terminal opens only from this server's own pages, not from %s; open it from the web console at %s", origin, a.s.consoleOrigin(r))
	}
	return a.openShell(w, r, caller, terminalShell, func(sh *openedShell) { a.serveTerminal(sh, req) })
}

// parseTerminalRequest reads cols, rows, resume and offset.
func parseTerminalRequest(q url.Values) (terminalRequest, error) {
	req := terminalRequest{size: sdk.TerminalSize{Columns: defaultCols, Rows: defaultRows}, resume: q.Get("resume")}
	for _, p := range []struct {
		name string
		to   *int
	}{{"cols", &req.size.Columns}, {"rows", &req.size.Rows}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return req, httpapi.Errorf(http.StatusBadRequest, "%s=%q is not a terminal size; give a whole number of characters, such as %s=%d", p.name, v, p.name, *p.to)
		}
		*p.to = min(n, maxTerminalSide)
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return req, httpapi.Errorf(http.StatusBadRequest, "offset=%q is not a count of output bytes; give the number of bytes the terminal has shown, such as offset=0", v)
		}
		req.offset = n
	}
	return req, nil
}

// refuseInWebSocket delivers err, a refusal of a terminal that came once
// the request was known to ask for a WebSocket (openShell), where the page
// can read it: it accepts the WebSocket and closes it at once with
// sdk.TerminalCloseRefused plus the HTTP status, the reason the refusal's
// sentence. The terminal's Origin was checked already (terminal).
func (a *API) refuseInWebSocket(w http.ResponseWriter, r *http.Request, err error) error {
	p := httpapi.ProblemFor(r, a.log, err)
	ws, aerr := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled, InsecureSkipVerify: true})
	if aerr != nil {
		return nil // Accept has answered the client already
	}
	_ = ws.Close(websocket.StatusCode(sdk.TerminalCloseRefused+p.Status), closeReason(p.Status, p.Detail))
	return nil
}

// closeReason fits a refusal's sentence ("cause; what to do", the
// API's) into a close frame's reason, shortening it where it must while
// it stays a sentence: the cause loses its trailing clauses (", the most
// one user may have at once"), then the remedy its parentheses, then its
// alternatives (", or ask an administrator..."), then the remedy goes;
// failing all that, a sentence of the status alone.
func closeReason(status int, s string) string {
	if len(s) <= maxCloseReason {
		return s
	}
	cause, remedy, _ := strings.Cut(s, "; ")
	join := func() string {
		if remedy == "" {
			return cause
		}
		return cause + "; " + remedy
	}
	for len(join()) > maxCloseReason {
		if i := strings.LastIndex(cause, ", "); i > 0 {
			cause = cause[:i]
		} else if i, j := strings.LastIndex(remedy, " ("), strings.LastIndex(remedy, ")"); i > 0 && j > i {
			remedy = remedy[:i] + remedy[j+1:]
		} else if i := strings.LastIndex(remedy, ", or "); i > 0 {
			remedy = remedy[:i]
		} else if remedy != "" {
			remedy = ""
		} else {
			return fmt.Sprintf("the server refused the terminal (%d %s); try again, and ask an administrator if it goes on", status, http.StatusText(status))
		}
	}
	return join()
}

// terminalSize is a resize's size within bounds; false for one that
// names no size.
func terminalSize(cols, rows int) (sdk.TerminalSize, bool) {
	if cols < 1 || rows < 1 {
		return sdk.TerminalSize{}, false
	}
	return sdk.TerminalSize{Columns: min(cols, maxTerminalSide), Rows: min(rows, maxTerminalSide)}, true
}

// ptyShell is the shell behind a terminal: a kept one (sdk.KeptShell), or
// a plainShell from an agent that keeps no more.
type ptyShell interface {
	io.ReadWriter
	WindowChange(sdk.TerminalSize) error
	// Signal sends the shell's process group sig.
	Signal(sig ssh.Signal) error
	// Wait returns the shell's exit once its channel has closed; nil when
	// it closed without one.
	Wait() *sdk.ShellExit
}

// terminalEnd is what ended a terminal first.
type terminalEnd int

const (
	terminalLeft        terminalEnd = iota // TerminalLeave
	terminalTabClosed                      // a close frame with StatusGoingAway: the tab closed or navigated away
	terminalClosed                         // another close frame
	terminalLost                           // the connection broke, or pings went unanswered
	terminalOversized                      // a text message over maxTerminalText
	terminalShellEnded                     // the shell's channel closed, with its exit or without
	terminalServerEnded                    // the server shuts down, or cut the terminal
)

func (e terminalEnd) String() string {
	return [...]string{"left", "tab closed", "client closed", "client lost", "oversized message", "shell ended", "server ended"}[e]
}

// terminalEvent is an end, with the shell's exit for terminalShellEnded.
type terminalEvent struct {
	end  terminalEnd
	exit *sdk.ShellExit
}

// verdict maps the end onto the attachment's verdict (tunnelend.go).
func (ev terminalEvent) verdict() verdict {
	switch {
	case ev.end == terminalLeft, ev.end == terminalTabClosed, ev.end == terminalShellEnded && ev.exit != nil:
		return shellClosed
	}
	return clientVanished
}

// serveTerminal runs the terminal on an admitted shell until its verdict,
// records it, and closes the WebSocket.
func (a *API) serveTerminal(sh *openedShell, req terminalRequest) {
	ws, id := sh.ws, sh.sess.ID
	ws.SetReadLimit(-1) // input is streamed, text messages bounded as they are read
	client, shell, ready, err := startTerminal(sh, req)
	if err != nil {
		a.log.Info("terminal not started", "session_id", id, "attachment", sh.attachment, "err", err)
		_ = sh.agent.Close()
		a.s.detach(sh.ctx, id, sh.attachment, false)
		code, reason := websocket.StatusInternalError, "cannot start a shell in the session's agent; try again, or start a new session"
		switch {
		case errors.Is(err, sdk.ErrShellGone):
			code, reason = sdk.TerminalCloseGone, "the session's agent no longer has this shell; open a new terminal"
		case sh.ctx.Err() != nil:
			code, reason = websocket.StatusGoingAway, serverEndReason(a.s.ctx)
		}
		_ = ws.Close(code, reason)
		if code == websocket.StatusInternalError {
			a.checkAgent(sh.ctx) // it may have died
		}
		return
	}
	ready.KeepaliveMS = a.s.cfg.PingInterval.Milliseconds()
	if err := writeTerminalMessage(ws, ready); err != nil {
		_ = client.Close()
		a.s.detach(sh.ctx, id, sh.attachment, false)
		_ = ws.CloseNow()
		return
	}

	events := make(chan terminalEvent, 4) // input sends at most two, output one
	stop := make(chan struct{})           // ends the agent's and the page's keepalives
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); terminalInput(ws, shell, events) }()
	go func() { defer wg.Done(); terminalOutput(ws, shell, events) }()
	go func() { defer wg.Done(); pingAgent(client, a.s.cfg.PingInterval, stop) }()
	pageKept := make(chan struct{}) // closed once the page's keepalive has stopped
	go func() { defer close(pageKept); keepPage(ws, a.s.cfg.PingInterval, stop) }()

	var ev terminalEvent
	select {
	case ev = <-events:
	case <-sh.ctx.Done():
		ev = terminalEvent{end: terminalServerEnded}
	}
	if ev.end == terminalLeft || ev.end == terminalTabClosed {
		// Closed on purpose: hang up the shell, as closing a terminal
		// does. One that vanished runs on, kept for a resume.
		hangUp(client, shell, a.s.cfg.PingInterval)
	}
	// A shell's channel that closed without an exit on a connection that
	// still stands was taken over: another terminal resumed the shell.
	takenOver := ev.end == terminalShellEnded && ev.exit == nil && agentAnswers(client, a.s.cfg.PingInterval, nil)
	close(stop)
	<-pageKept         // nothing follows the exit or the close
	_ = client.Close() // a kept shell stays with the agent
	v := ev.verdict()
	a.log.Debug("terminal ended", "session_id", id, "attachment", sh.attachment, "event", ev.end.String(), "taken_over", takenOver, "verdict", v.String())
	if ev.end == terminalShellEnded && ev.exit != nil {
		exit := sdk.TerminalMessage{Type: sdk.TerminalExit, Signal: ev.exit.Signal}
		if exit.Signal == "" {
			status := int(ev.exit.Status)
			exit.Status = &status
		}
		_ = writeTerminalMessage(ws, exit)
	}
	// Recorded before the WebSocket closes: a browser that sees the close
	// of a shell that exited finds its session ended when it was the last.
	a.s.detach(sh.ctx, id, sh.attachment, v == shellClosed)
	switch ev.end {
	case terminalLeft, terminalShellEnded:
		switch {
		case v == shellClosed:
			_ = ws.Close(websocket.StatusNormalClosure, "closed")
		case takenOver:
			_ = ws.Close(sdk.TerminalCloseTakenOver, "another terminal resumed this shell; this one is no longer attached to it")
		default:
			_ = ws.Close(websocket.StatusInternalError, "the connection to the session's agent ended without the shell exiting; reconnect to resume it")
		}
	case terminalOversized:
		_ = ws.Close(websocket.StatusPolicyViolation, "a text message is larger than 4 KiB; this terminal takes JSON messages only")
	case terminalServerEnded:
		_ = ws.Close(websocket.StatusGoingAway, serverEndReason(a.s.ctx))
	default: // the browser closed it, or is gone
		_ = ws.CloseNow()
	}
	wg.Wait()
	if ev.end == terminalShellEnded && ev.exit == nil && !takenOver {
		a.checkAgent(sh.ctx)
	}
}

// serverEndReason says why the server ended a terminal: it shuts down
// (server, its context, ended), or it cut the terminal.
func serverEndReason(server context.Context) string {
	if server.Err() != nil {
		return "the server is shutting down; reconnect in a moment"
	}
	return "the session ended, or your access to it was removed"
}

// checkAgent checks at once whether the agent died under a shell rather
// than at the next liveness round, as serveTunnel does (on the leader,
// which runs that round).
func (a *API) checkAgent(ctx context.Context) {
	if err := a.s.asLeader(a.s.checkLiveness)(context.WithoutCancel(ctx)); err != nil {
		a.log.Error("liveness check", "err", err)
	}
}

// startTerminal runs the SSH handshake with the session's agent and opens
// the shell the request asks for: a new kept one, or the kept one it
// resumes. It returns the message that tells the browser the shell runs.
func startTerminal(sh *openedShell, req terminalRequest) (*ssh.Client, ptyShell, sdk.TerminalMessage, error) {
	ready := sdk.TerminalMessage{Type: sdk.TerminalReady}
	setup, cancel := context.WithTimeout(sh.ctx, shellSetupWait)
	defer cancel()
	// The handshake and the shell's requests block on the agent: a
	// deadline or a server that ends closes the connection under them.
	cut := context.AfterFunc(setup, func() { _ = sh.agent.Close() })
	conn, chans, reqs, err := ssh.NewClientConn(sh.agent, "devgpu", &ssh.ClientConfig{
		User: sh.sess.User,
		// The connection is authenticated and authorised by this server,
		// which alone can reach the agent, so the agent's key proves
		// nothing more (as internal/cli/shell.go).
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		cut()
		return nil, nil, ready, errors.Join(err, setup.Err())
	}
	client := ssh.NewClient(conn, chans, reqs)
	var shell ptyShell
	if req.resume != "" {
		var kept *sdk.KeptShell
		var answer sdk.ResumeAnswer
		if kept, answer, err = sdk.ResumeShell(client, req.resume, req.offset); err == nil {
			// The browser may have changed size while it was away.
			_ = kept.WindowChange(req.size)
			shell, ready.Token, ready.InputReceived, ready.Oldest = kept, kept.Token, answer.InputReceived, answer.Oldest
		}
	} else {
		var kept *sdk.KeptShell
		kept, err = sdk.OpenKeptShell(client, terminalType, req.size, terminalModes)
		switch {
		case err == nil:
			shell, ready.Token = kept, kept.Token
		case errors.Is(err, sdk.ErrKeepRefused):
			// An agent that keeps as many shells as it may: one that ends
			// with its connection, and no resume (no token).
			shell, err = startPlainShell(client, req.size)
		}
	}
	if !cut() || err != nil {
		_ = client.Close()
		return nil, nil, ready, errors.Join(err, setup.Err())
	}
	return client, shell, ready, nil
}

// hangUp sends the shell SIGHUP and waits for the agent's answer, so that
// the request is handled before the connection closes; an agent that does
// not answer within timeout has its connection closed, which ends the
// wait (the caller closes it next anyway).
func hangUp(client *ssh.Client, shell ptyShell, timeout time.Duration) {
	t := time.AfterFunc(timeout, func() { _ = client.Close() })
	defer t.Stop()
	_ = shell.Signal(ssh.SIGHUP)
}

// keepPage sends the page TerminalKeepalive every interval until stop
// closes: the page cannot see the WebSocket's pings, and counts a
// connection that stays silent lost (sdk/terminal.go). A write that
// cannot go within the interval is given up: the page has output to read,
// or the pings find the connection dead.
func keepPage(ws *websocket.Conn, interval time.Duration, stop <-chan struct{}) {
	msg, _ := json.Marshal(sdk.TerminalMessage{Type: sdk.TerminalKeepalive})
	onEachTick(interval, stop, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), interval)
		err := ws.Write(ctx, websocket.MessageText, msg)
		cancel()
		return err == nil || ctx.Err() != nil // else the WebSocket has ended
	})
}

// onEachTick calls tick every interval until stop closes or tick returns
// false.
func onEachTick(interval time.Duration, stop <-chan struct{}, tick func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if !tick() {
			return
		}
	}
}

// writeTerminalMessage sends m as a text message.
func writeTerminalMessage(ws *websocket.Conn, m sdk.TerminalMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), shellSetupWait)
	defer cancel()
	return ws.Write(ctx, websocket.MessageText, b)
}

// terminalInput passes the browser's binary messages to the shell and
// acts on its text messages, until the WebSocket ends, which it reports.
// It reports TerminalLeave as it comes, and goes on reading until the
// close. Once the shell's side has failed, input is discarded.
func terminalInput(ws *websocket.Conn, shell ptyShell, events chan<- terminalEvent) {
	buf := make([]byte, copyBufferSize)
	shellGone, left := false, false
	for {
		typ, r, err := ws.Reader(context.Background())
		if err != nil {
			switch websocket.CloseStatus(err) {
			case websocket.StatusGoingAway:
				events <- terminalEvent{end: terminalTabClosed}
			case -1:
				events <- terminalEvent{end: terminalLost}
			default:
				events <- terminalEvent{end: terminalClosed}
			}
			return
		}
		if typ == websocket.MessageText {
			b, err := io.ReadAll(io.LimitReader(r, maxTerminalText+1))
			if err != nil {
				continue // the next Reader fails too
			}
			if len(b) > maxTerminalText {
				events <- terminalEvent{end: terminalOversized}
				return
			}
			var m sdk.TerminalMessage
			if json.Unmarshal(b, &m) != nil {
				continue // not for this server: a newer client's, say
			}
			switch m.Type {
			case sdk.TerminalResize:
				if size, ok := terminalSize(m.Cols, m.Rows); ok && !shellGone {
					_ = shell.WindowChange(size)
				}
			case sdk.TerminalLeave:
				if !left {
					left = true
					events <- terminalEvent{end: terminalLeft}
				}
			}
			continue
		}
		if shellGone || left {
			_, _ = io.Copy(io.Discard, r)
			continue
		}
		if srcEnded, _ := copyStream(shell, r, buf); !srcEnded {
			shellGone = true // terminalOutput reports it
			_, _ = io.Copy(io.Discard, r)
		}
	}
}

// terminalOutput sends the shell's output to the browser as binary
// messages until either fails. When the shell's side ended, it reports
// it with the shell's exit.
func terminalOutput(ws *websocket.Conn, shell ptyShell, events chan<- terminalEvent) {
	if srcEnded, _ := copyStream(wsWriter{ws}, shell, make([]byte, copyBufferSize)); !srcEnded {
		return // the browser's side failed: terminalInput reports it
	}
	events <- terminalEvent{end: terminalShellEnded, exit: shell.Wait()}
}

// pingAgent closes the SSH connection when the agent stops answering,
// as the CLI's shell does, so that an agent that hangs or a relay that
// died silently ends the terminal. It returns once stop has closed and
// its request has been answered or the connection closed.
func pingAgent(client *ssh.Client, interval time.Duration, stop <-chan struct{}) {
	onEachTick(interval, stop, func() bool { return agentAnswers(client, interval, stop) })
}

// agentAnswers reports whether the agent answers a request on the
// connection within timeout. One that does not has its connection
// closed; once stop closes, the caller closes it. Either ends the request,
// which agentAnswers waits for.
func agentAnswers(client *ssh.Client, timeout time.Duration, stop <-chan struct{}) bool {
	answered := make(chan error, 1)
	go func() {
		// The agent refuses it; that it answers is what counts.
		_, _, err := client.SendRequest("keepalive@devgpu.dev", true, nil)
		answered <- err
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-answered:
		return err == nil
	case <-stop:
	case <-t.C:
		_ = client.Close()
	}
	<-answered
	return false
}

// plainShell is a shell that ends with its connection, from an agent
// that keeps no more shells.
type plainShell struct {
	s   *ssh.Session
	out io.Reader
	in  io.Writer
}

// startPlainShell starts a shell on a plain session channel, as the CLI
// does when the agent refuses to keep one.
func startPlainShell(client *ssh.Client, size sdk.TerminalSize) (*plainShell, error) {
	s, err := client.NewSession()
	if err != nil {
		return nil, err
	}
	p := &plainShell{s: s}
	if p.out, err = s.StdoutPipe(); err == nil {
		if p.in, err = s.StdinPipe(); err == nil {
			if err = s.RequestPty(terminalType, size.Rows, size.Columns, terminalModes); err == nil {
				if err = s.Shell(); err == nil {
					return p, nil
				}
			}
		}
	}
	_ = s.Close()
	return nil, err
}

func (p *plainShell) Read(b []byte) (int, error)  { return p.out.Read(b) }
func (p *plainShell) Write(b []byte) (int, error) { return p.in.Write(b) }

func (p *plainShell) WindowChange(size sdk.TerminalSize) error {
	return p.s.WindowChange(size.Rows, size.Columns)
}

func (p *plainShell) Signal(sig ssh.Signal) error { return p.s.Signal(sig) }

func (p *plainShell) Wait() *sdk.ShellExit {
	err := p.s.Wait()
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return &sdk.ShellExit{}
	case errors.As(err, &exit) && exit.Signal() != "":
		return &sdk.ShellExit{Signal: exit.Signal()}
	case errors.As(err, &exit):
		return &sdk.ShellExit{Status: uint32(exit.ExitStatus())}
	}
	return nil // the connection ended first
}
