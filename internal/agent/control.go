package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/crypto/ssh"
)

// controlUser is the SSH user name of the control plane's own connections,
// a label for logs: the agent knows them by their preamble.
const controlUser = "devgpu-control"

// Control is the control plane's own connection to an agent: not a shell,
// not an attachment. It asks for the session's last activity, sends
// notices to its shells, and starts the session's job (a detached run)
// and collects its output, which only a Control may do. Like any
// connection, it keeps an agent with IdleExit from exiting while it is open.
//
// A Control is safe for concurrent use; its requests go one at a time.
type Control struct {
	conn ssh.Conn
}

// DialControl presents secret on conn, a new connection to an agent, as the
// control plane's own connection, and performs the SSH handshake, within handshakeTimeout (10s). It takes
// conn over: on failure conn is closed, on success Close closes it.
func DialControl(conn net.Conn, secret string) (*Control, error) {
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := writeControlPreamble(conn, secret); err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent: control: write preamble: %w", err)
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, "devgpu-agent", &ssh.ClientConfig{
		User: controlUser,
		// The tunnel is the control plane's own; the agent's host key is
		// ephemeral and proves nothing.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		conn.Close()
		// An agent closes a connection with the wrong secret before the
		// handshake, which is all this side sees of it.
		return nil, fmt.Errorf("agent: control handshake (wrong secret, or not an agent): %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	go ssh.DiscardRequests(reqs)
	go func() {
		for nc := range chans {
			_ = nc.Reject(ssh.Prohibited, "control connection")
		}
	}()
	return &Control{conn: sc}, nil
}

// LastActivity returns the time of the last user activity in the session:
// the last input from a client to a shell or command, or output from one to
// a client. With no activity yet, it is when the agent started.
func (c *Control) LastActivity(ctx context.Context) (time.Time, error) {
	reply, err := c.request(ctx, activityRequest, nil)
	if err != nil {
		return time.Time{}, err
	}
	var m activityReply
	if err := ssh.Unmarshal(reply, &m); err != nil {
		return time.Time{}, fmt.Errorf("agent: %s reply: %w", activityRequest, err)
	}
	return time.Unix(0, int64(m.UnixNano)), nil
}

// Notice shows msg on every shell and command running in the session, on
// every connection: on a terminal as a line of its own, else on stderr. It
// returns once the agent has written it, or gave up waiting for clients
// that do not read (about a second); it does not count as activity.
func (c *Control) Notice(ctx context.Context, msg string) error {
	_, err := c.request(ctx, noticeRequest, ssh.Marshal(noticeMsg{msg}))
	return err
}

// SetEnv sets a variable of the environment the session's later shells
// and commands start with.
func (c *Control) SetEnv(ctx context.Context, name, value string) error {
	_, err := c.request(ctx, setenvRequest, ssh.Marshal(setenvMsg{name, value}))
	return err
}

// Close closes the connection.
func (c *Control) Close() error {
	return c.conn.Close()
}

// request sends a global request and waits for the reply, or until ctx is
// done, which closes the connection: the reply can then never be matched.
func (c *Control) request(ctx context.Context, name string, payload []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("agent: %s: %w", name, context.Cause(ctx))
	}
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	ok, reply, err := c.conn.SendRequest(name, true, payload)
	if !stop() && (err != nil || !ok) {
		return nil, fmt.Errorf("agent: %s: %w", name, context.Cause(ctx))
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %s: %w", name, err)
	}
	if !ok {
		return nil, errors.New("agent: " + name + " refused")
	}
	return reply, nil
}
