package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The tunnel protocol. The byte stream between the client and the
// session's agent travels in binary WebSocket messages both ways; a text
// message is a signal.
const (
	// SignalLeave, from the client: the shell on this tunnel ended on
	// purpose (its command reported an exit status, or its user ended it).
	// It is the one signal that makes the server count the attachment as
	// closed; a tunnel that ends without it (a close frame alone, a broken
	// connection, unanswered pings, a server shutdown) counts as vanished,
	// and the session waits out its detach grace for a reconnect. The
	// server answers by recording the end (the session's, when this was
	// its last shell) and only then closing the WebSocket normally.
	SignalLeave = "leave"
	// SignalAgentEnded, from the server: the agent's side of the stream
	// ended. Reads then return io.EOF, and the server waits for the
	// client's verdict: SignalLeave when its shell ended on purpose (an
	// OpenSSH client that disconnected), a close otherwise (an agent that
	// died).
	SignalAgentEnded = "agent-ended"
)

// maxSignal bounds the text messages read as signals.
const maxSignal = 64

// Tunnel is the byte stream to a session's agent (SSH inside a WebSocket),
// a net.Conn. End it with Leave when the shell ended on purpose; Close
// alone ends it as a client that vanished.
type Tunnel struct {
	SessionID string
	// Attachment is the attachment's random id, valid only within its
	// session, for WaitDetached.
	Attachment string

	ws      *websocket.Conn
	ctx     context.Context // lives as long as the tunnel
	reading chan struct{}   // holds a token while one goroutine reads
	cur     io.Reader       // the binary message being read (held by reading)

	agentEnded atomic.Bool   // SignalAgentEnded came
	leaving    atomic.Bool   // Leave has sent SignalLeave
	ended      chan struct{} // closed once the WebSocket has ended
	endOnce    sync.Once
	endErr     error // why it ended; written before ended is closed

	deadlineMu            sync.Mutex
	readTimer, writeTimer *time.Timer
}

func newTunnel(ws *websocket.Conn, sessionID, attachment string) *Tunnel {
	// Messages are streamed, never held whole: no size limit is needed.
	ws.SetReadLimit(-1)
	return &Tunnel{
		SessionID: sessionID, Attachment: attachment,
		ws: ws, ctx: context.Background(),
		reading: make(chan struct{}, 1), ended: make(chan struct{}),
	}
}

// Read reads the agent's stream. It returns io.EOF once the agent's side
// has ended or the server closed the tunnel normally.
func (t *Tunnel) Read(p []byte) (int, error) {
	select {
	case t.reading <- struct{}{}:
	case <-t.ended:
		return 0, t.readErr()
	}
	defer func() { <-t.reading }()
	for {
		if t.agentEnded.Load() {
			return 0, io.EOF
		}
		select {
		case <-t.ended:
			return 0, t.readErr()
		default:
		}
		if t.cur == nil {
			t.next()
			continue
		}
		n, err := t.cur.Read(p)
		if err == io.EOF {
			t.cur, err = nil, nil
			if n == 0 {
				continue
			}
		}
		if err != nil {
			t.end(err)
			if n == 0 {
				continue
			}
		}
		return n, nil
	}
}

// next reads the next message's header: a binary message becomes cur, a
// signal is noted, an error ends the tunnel. The caller holds reading.
func (t *Tunnel) next() {
	typ, r, err := t.ws.Reader(t.ctx)
	if err != nil {
		t.end(err)
		return
	}
	if typ == websocket.MessageBinary {
		t.cur = r
		return
	}
	b, err := io.ReadAll(io.LimitReader(r, maxSignal))
	if err == nil {
		_, err = io.Copy(io.Discard, r)
	}
	if err != nil {
		t.end(err)
		return
	}
	// Unknown signals are for newer clients: ignored.
	if string(b) == SignalAgentEnded {
		t.agentEnded.Store(true)
	}
}

// end records why the WebSocket ended, once.
func (t *Tunnel) end(err error) {
	t.endOnce.Do(func() {
		t.endErr = err
		close(t.ended)
	})
}

// readErr is what Read returns once the WebSocket ended: io.EOF for a
// normal close.
func (t *Tunnel) readErr() error {
	switch websocket.CloseStatus(t.endErr) {
	case websocket.StatusNormalClosure, websocket.StatusGoingAway:
		return io.EOF
	}
	return t.endErr
}

// Write sends p to the agent as one binary message.
func (t *Tunnel) Write(p []byte) (int, error) {
	if err := t.ws.Write(t.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Ended reports whether the tunnel can no longer carry the shell: the
// agent's side ended, or the WebSocket did.
func (t *Tunnel) Ended() bool {
	select {
	case <-t.ended:
		return true
	default:
		return t.agentEnded.Load()
	}
}

// AgentEnded reports whether the server said that the agent's side of the
// stream ended (SignalAgentEnded).
func (t *Tunnel) AgentEnded() bool { return t.agentEnded.Load() }

// Leave ends the shell on purpose: it sends SignalLeave and waits, until
// ctx ends, for the server to close the tunnel, which it does once it has
// recorded the end. When this was the session's last shell, the session
// has then ended and its GPU is free. Data still arriving is discarded.
func (t *Tunnel) Leave(ctx context.Context) error {
	if err := t.ws.Write(ctx, websocket.MessageText, []byte(SignalLeave)); err != nil {
		t.end(err)
		return fmt.Errorf("tell the server that the shell in session %s ended: %w", t.SessionID, err)
	}
	t.leaving.Store(true)
	stop := context.AfterFunc(ctx, func() { _ = t.ws.CloseNow() })
	defer stop()
	t.drain()
	if websocket.CloseStatus(t.endErr) == websocket.StatusNormalClosure {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("the server did not confirm the end of the shell in session %s in time: %w", t.SessionID, ctx.Err())
	}
	return fmt.Errorf("the tunnel to session %s broke before the server confirmed the shell's end: %w", t.SessionID, t.endErr)
}

// drain reads and discards until the WebSocket ends, taking turns with a
// Read in progress (which ends with it too).
func (t *Tunnel) drain() {
	for {
		select {
		case t.reading <- struct{}{}:
		case <-t.ended:
			return
		}
		if t.cur != nil {
			if _, err := io.Copy(io.Discard, t.cur); err != nil {
				t.end(err)
			}
			t.cur = nil
		} else {
			t.next()
		}
		<-t.reading
	}
}

// Close ends the tunnel with a WebSocket close handshake but without
// SignalLeave (unless Leave sent it already): the server counts the shell
// as vanished, and its session waits out the detach grace.
//
// Once Leave has begun, Close waits for its end instead: an SSH client
// closes its connection when the server's close reaches it, and its own
// close frame must not race the server's.
func (t *Tunnel) Close() error {
	t.stopDeadlines()
	if t.leaving.Load() {
		<-t.ended // Leave's context bounds this
		_ = t.ws.CloseNow()
		return nil
	}
	err := t.ws.Close(websocket.StatusNormalClosure, "")
	t.end(net.ErrClosed)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// LocalAddr and RemoteAddr name no network address: the tunnel is a
// WebSocket through the server.
func (t *Tunnel) LocalAddr() net.Addr  { return tunnelAddr{} }
func (t *Tunnel) RemoteAddr() net.Addr { return tunnelAddr{} }

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "websocket" }
func (tunnelAddr) String() string  { return "devgpu-tunnel" }

// SetDeadline sets both deadlines. A deadline that passes closes the
// tunnel, as a WebSocket cannot resume a message it gave up reading.
func (t *Tunnel) SetDeadline(d time.Time) error {
	_ = t.SetReadDeadline(d)
	return t.SetWriteDeadline(d)
}

// SetReadDeadline: see SetDeadline.
func (t *Tunnel) SetReadDeadline(d time.Time) error {
	t.setDeadline(&t.readTimer, d)
	return nil
}

// SetWriteDeadline: see SetDeadline.
func (t *Tunnel) SetWriteDeadline(d time.Time) error {
	t.setDeadline(&t.writeTimer, d)
	return nil
}

func (t *Tunnel) setDeadline(timer **time.Timer, d time.Time) {
	t.deadlineMu.Lock()
	defer t.deadlineMu.Unlock()
	if *timer != nil {
		(*timer).Stop()
		*timer = nil
	}
	if !d.IsZero() {
		*timer = time.AfterFunc(time.Until(d), func() { _ = t.ws.CloseNow() })
	}
}

func (t *Tunnel) stopDeadlines() {
	t.setDeadline(&t.readTimer, time.Time{})
	t.setDeadline(&t.writeTimer, time.Time{})
}

var _ net.Conn = (*Tunnel)(nil)
