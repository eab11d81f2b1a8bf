package sdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/devgpu/devgpu/internal/testutil"
)

// fakeServer accepts one tunnel and runs serve on it; what serve returns
// is sent on done.
func fakeServer(t *testing.T, serve func(ctx context.Context, ws *websocket.Conn) string) (*Tunnel, <-chan string) {
	t.Helper()
	done := make(chan string, 1)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			done <- "accept: " + err.Error()
			return
		}
		ws.SetReadLimit(-1)
		done <- serve(context.Background(), ws)
	}))
	t.Cleanup(hs.Close)
	c, err := NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	tunnel, err := c.Connect(testutil.Context(t, testutil.WaitShort), "s1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tunnel.Close() })
	return tunnel, done
}

// readSignals reads until a text message (a signal) or an error, and
// returns the signal or the error.
func readSignal(ctx context.Context, ws *websocket.Conn) (string, error) {
	for {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			return "", err
		}
		if typ == websocket.MessageText {
			return string(b), nil
		}
	}
}

// Leave sends the signal and returns only once the server has closed the
// tunnel, while the server still streams data and another goroutine reads
// (as an SSH client does): that reader then sees the end.
func TestTunnelLeaveWaitsForTheServersClose(t *testing.T) {
	t.Parallel()
	closedAfterLeave := make(chan struct{})
	tunnel, done := fakeServer(t, func(ctx context.Context, ws *websocket.Conn) string {
		stop := make(chan struct{})
		go func() { // output keeps coming
			for {
				select {
				case <-stop:
					return
				default:
				}
				if ws.Write(ctx, websocket.MessageBinary, make([]byte, 32<<10)) != nil {
					return
				}
			}
		}()
		sig, err := readSignal(ctx, ws)
		close(stop)
		if err != nil || sig != SignalLeave {
			return "got " + sig + ", " + errString(err)
		}
		close(closedAfterLeave)
		return errString(ws.Close(websocket.StatusNormalClosure, "closed"))
	})
	reader := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, tunnel)
		reader <- err
	}()
	if err := tunnel.Leave(testutil.Context(t, testutil.WaitShort)); err != nil {
		t.Fatalf("leave: %v", err)
	}
	select {
	case <-closedAfterLeave:
	default:
		t.Fatal("Leave returned before the server closed the tunnel")
	}
	if err := <-reader; err != nil {
		t.Fatalf("the concurrent reader ended with %v, want EOF", err)
	}
	if msg := <-done; msg != "" {
		t.Fatalf("server: %s", msg)
	}
	if err := tunnel.Close(); err != nil {
		t.Fatalf("close after leave: %v", err)
	}
}

// The server's agent-ended signal ends reads with io.EOF after the data
// before it, and the client may still leave.
func TestTunnelAgentEndedThenLeave(t *testing.T) {
	t.Parallel()
	tunnel, done := fakeServer(t, func(ctx context.Context, ws *websocket.Conn) string {
		if err := ws.Write(ctx, websocket.MessageBinary, []byte("last words")); err != nil {
			return err.Error()
		}
		if err := ws.Write(ctx, websocket.MessageText, []byte(SignalAgentEnded)); err != nil {
			return err.Error()
		}
		sig, err := readSignal(ctx, ws)
		if err != nil || sig != SignalLeave {
			return "got " + sig + ", " + errString(err)
		}
		return errString(ws.Close(websocket.StatusNormalClosure, "closed"))
	})
	b, err := io.ReadAll(tunnel)
	if err != nil || string(b) != "last words" {
		t.Fatalf("read %q, %v; want the data before the signal, then EOF", b, err)
	}
	if !tunnel.AgentEnded() || !tunnel.Ended() {
		t.Fatal("the tunnel does not say that the agent ended")
	}
	if err := tunnel.Leave(testutil.Context(t, testutil.WaitShort)); err != nil {
		t.Fatalf("leave after the agent ended: %v", err)
	}
	if msg := <-done; msg != "" {
		t.Fatalf("server: %s", msg)
	}
}

// Close sends a normal close frame and no leave signal.
func TestTunnelCloseDoesNotLeave(t *testing.T) {
	t.Parallel()
	tunnel, done := fakeServer(t, func(ctx context.Context, ws *websocket.Conn) string {
		sig, err := readSignal(ctx, ws)
		if sig != "" || websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			return "got signal " + sig + ", " + errString(err) + "; want a close frame alone"
		}
		return ""
	})
	if err := tunnel.Close(); err != nil {
		t.Fatal(err)
	}
	if msg := <-done; msg != "" {
		t.Fatalf("server: %s", msg)
	}
}

// A Leave the server does not confirm fails when its context ends and
// says so.
func TestTunnelLeaveUnconfirmed(t *testing.T) {
	t.Parallel()
	got := make(chan struct{})
	tunnel, _ := fakeServer(t, func(ctx context.Context, ws *websocket.Conn) string {
		if sig, _ := readSignal(ctx, ws); sig == SignalLeave {
			close(got)
		}
		_, _ = readSignal(ctx, ws) // until the client gives up
		return ""
	})
	ctx, cancel := context.WithCancel(testutil.Context(t, testutil.WaitShort))
	go func() {
		<-got
		cancel()
	}()
	err := tunnel.Leave(ctx)
	if err == nil || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "did not confirm") {
		t.Fatalf("unconfirmed leave: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
