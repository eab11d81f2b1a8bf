package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// tunnelRig is a server on the real local runtime (real agents) with GPUs
// enough for sessions that are left running within their detach grace.
type tunnelRig struct {
	*fixture
	dev *sdk.Client
}

func newTunnelRig(t *testing.T) *tunnelRig {
	f := newFixtureWith(t, "t4:8")
	return &tunnelRig{fixture: f, dev: must(sdk.NewClient(f.url, f.dev))}
}

// open starts a session for dev and opens a tunnel to it through a
// connection that cut breaks.
func (r *tunnelRig) open(t *testing.T) (sdk.Session, *sdk.Tunnel, func()) {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitLong)
	sess, err := r.dev.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := must(sdk.NewClient(r.url, r.fixture.dev))
	cc := &cuttableConn{}
	c.HTTP = &http.Client{Transport: &http.Transport{DialContext: cc.dial}}
	tunnel, err := c.Connect(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tunnel.Close() })
	return sess, tunnel, cc.cut
}

// sshOver runs the SSH handshake with the agent over the tunnel, as the
// CLI does.
func sshOver(t *testing.T, tunnel *sdk.Tunnel, sess sdk.Session) *ssh.Client {
	t.Helper()
	conn, chans, reqs, err := ssh.NewClientConn(tunnel, "devgpu", &ssh.ClientConfig{User: sess.User, HostKeyCallback: ssh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatalf("SSH handshake over the tunnel: %v", err)
	}
	return ssh.NewClient(conn, chans, reqs)
}

// hangUpAgent makes the agent close the tunnel's connection while it
// keeps running, as it does after an OpenSSH client's disconnect: it is
// sent a version line longer than SSH allows. The tunnel then reads EOF
// and knows that the agent ended.
func hangUpAgent(t *testing.T, tunnel *sdk.Tunnel) {
	t.Helper()
	if _, err := tunnel.Write(append(bytes.Repeat([]byte("x"), 1024), '\r', '\n')); err != nil {
		t.Fatal(err)
	}
	_ = tunnel.SetReadDeadline(time.Now().Add(testutil.WaitMedium))
	if _, err := io.Copy(io.Discard, tunnel); err != nil {
		t.Fatalf("reading until the agent hung up: %v", err)
	}
	_ = tunnel.SetReadDeadline(time.Time{})
	if !tunnel.AgentEnded() {
		t.Fatal("the tunnel ended without the server saying that the agent ended")
	}
}

func (r *tunnelRig) session(t *testing.T, id string) store.Session {
	t.Helper()
	s, err := r.srv.store.Session(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitDetached waits until the session has no attachment (or ended).
func (r *tunnelRig) waitDetached(t *testing.T, id string) store.Session {
	t.Helper()
	var s store.Session
	testutil.Eventually(t, testutil.WaitMedium, "session "+id+" to lose its attachment", func() bool {
		s = r.session(t, id)
		return s.Attachments == 0 || s.State == sdk.StateEnded
	})
	return s
}

// waitEnded waits until the session has ended.
func (r *tunnelRig) waitEnded(t *testing.T, id string) store.Session {
	t.Helper()
	var s store.Session
	testutil.Eventually(t, testutil.WaitMedium, "session "+id+" to end", func() bool {
		s = r.session(t, id)
		return s.State == sdk.StateEnded
	})
	return s
}

// A shell that leaves while its agent floods it with output is recorded
// as closed by the time Leave returns, every time: the close the server
// answers with comes after the end is in the store, and the client reads
// until then, so no close is lost to a connection reset. (Before the
// in-band signal, about 1 in 300 tunnels lost its close frame.)
func TestTunnelLeaveUnderOutput(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	for i := range 10 {
		sess, tunnel, _ := r.open(t)
		client := sshOver(t, tunnel, sess)
		s, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start("yes flooding-the-tunnel"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(out, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		// Leave while the output still pours in and nobody reads it.
		ctx := testutil.Context(t, testutil.WaitMedium)
		if err := tunnel.Leave(ctx); err != nil {
			t.Fatalf("round %d: leave: %v", i, err)
		}
		got := r.session(t, sess.ID)
		if got.State != sdk.StateEnded || got.EndReason != sdk.ReasonClosed {
			t.Fatalf("round %d: session when Leave returned: %s (%s), want ended (closed)", i, got.State, got.EndReason)
		}
		_ = client.Close()
	}
}

// Every way a tunnel ends other than the client's leave signal leaves the
// session running within its detach grace; the agent's end decides
// nothing until the client says.
func TestTunnelEnds(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	for _, c := range []struct {
		name   string
		end    func(t *testing.T, tunnel *sdk.Tunnel, cut func())
		closed bool
	}{
		{"the client leaves", func(t *testing.T, tunnel *sdk.Tunnel, _ func()) {
			if err := tunnel.Leave(ctx); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a close frame without the leave signal", func(t *testing.T, tunnel *sdk.Tunnel, _ func()) {
			if err := tunnel.Close(); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"the network connection breaks", func(t *testing.T, _ *sdk.Tunnel, cut func()) { cut() }, false},
		{"the agent hangs up, then the client leaves (an OpenSSH disconnect)", func(t *testing.T, tunnel *sdk.Tunnel, _ func()) {
			hangUpAgent(t, tunnel)
			if err := tunnel.Leave(ctx); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"the agent hangs up, then the client closes", func(t *testing.T, tunnel *sdk.Tunnel, _ func()) {
			hangUpAgent(t, tunnel)
			_ = tunnel.Close()
		}, false},
		{"the agent hangs up, then the network breaks", func(t *testing.T, tunnel *sdk.Tunnel, cut func()) {
			hangUpAgent(t, tunnel)
			cut()
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sess, tunnel, cut := r.open(t)
			c.end(t, tunnel, cut)
			s := r.waitDetached(t, sess.ID)
			switch {
			case c.closed && (s.State != sdk.StateEnded || s.EndReason != sdk.ReasonClosed):
				t.Fatalf("session = %s (%s), want ended (closed)", s.State, s.EndReason)
			case !c.closed && (s.State != sdk.StateRunning || s.DetachedAt.IsZero()):
				t.Fatalf("session = %s (%s), detached at %v; want running, detached, within the grace", s.State, s.EndReason, s.DetachedAt)
			}
		})
	}
}

// An agent that dies under a shell ends its session as lost, not closed:
// the client (as `devgpu shell` does without an exit status) closes
// without the leave signal, and the server notices the dead agent at once.
func TestTunnelAgentDies(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	sess, tunnel, _ := r.open(t)
	client := sshOver(t, tunnel, sess)
	if err := r.srv.backends[0].Runtime.Stop(ctx, sess.ID); err != nil { // the runtime loses it
		t.Fatal(err)
	}
	_ = client.Wait()
	if !tunnel.Ended() {
		t.Fatal("the SSH connection ended but the tunnel did not")
	}
	_ = client.Close() // closes the tunnel: no leave signal
	if s := r.waitEnded(t, sess.ID); s.EndReason != sdk.ReasonLost {
		t.Fatalf("session whose agent died ended %q, want lost", s.EndReason)
	}
}

// A server that shuts down under an open tunnel tells the client it is
// going away and counts the shell as vanished: the session keeps running
// for the next server, which reconciles it.
func TestTunnelServerShutdown(t *testing.T) {
	t.Parallel()
	r := newTunnelRig(t)
	sess, tunnel, _ := r.open(t)
	read := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, tunnel)
		read <- err
	}()
	r.srv.Close()
	select {
	case err := <-read:
		if err != nil {
			t.Fatalf("the tunnel of a server that shut down ended with %v, want a normal end (going away)", err)
		}
	case <-time.After(testutil.WaitShort):
		t.Fatal("the tunnel did not end with its server")
	}
	s := r.session(t, sess.ID)
	if s.State != sdk.StateRunning || s.Attachments != 0 || s.DetachedAt.IsZero() {
		t.Fatalf("session after the server shut down = %s (%s), %d attachments; want running, detached", s.State, s.EndReason, s.Attachments)
	}
}
