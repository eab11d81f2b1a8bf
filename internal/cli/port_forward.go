package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
)

func newPortForwardCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "port-forward SESSION LOCAL:REMOTE",
		Short: "Forward a local TCP port to a port inside a running session",
		Long: `Listen on 127.0.0.1:LOCAL and carry each connection through the session's
tunnel to 127.0.0.1:REMOTE inside the session: for Jupyter, TensorBoard and
the like. SESSION is a session id, or ":" for your only running session;
PORT alone means LOCAL and REMOTE are the same, and LOCAL 0 picks a free port.
It fails at once when nothing in the session accepts connections on REMOTE,
and runs until Ctrl-C. A session on the local runtime shares this machine's
network: open its ports directly rather than forwarding a port to itself.`,
		Example: `  devgpu port-forward 3f9c2a 8888
  devgpu port-forward : 0:6006`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			local, remote, err := parsePorts(args[1])
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return portForward(ctx, strings.TrimSuffix(args[0], ":"), local, remote)
		},
	}
}

// parsePorts reads LOCAL:REMOTE, or PORT for both.
func parsePorts(arg string) (local, remote int, err error) {
	l, r, ok := strings.Cut(arg, ":")
	if !ok {
		r = l
	}
	local, lerr := strconv.Atoi(l)
	remote, rerr := strconv.Atoi(r)
	if lerr != nil || rerr != nil || local < 0 || local > 65535 || remote < 1 || remote > 65535 {
		return 0, 0, fmt.Errorf("ports %q are not LOCAL:REMOTE TCP port numbers, such as 8888:8888", arg)
	}
	return local, remote, nil
}

func portForward(ctx context.Context, sessionID string, local, remote int) error {
	conn, sess, err := attachRunning(ctx, sessionID)
	if err != nil {
		return err
	}
	defer conn.Close()
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(remote))
	// Before listening, so that the dial cannot reach our own listener: a
	// port nothing serves fails now, not at the first connection.
	probe, err := conn.Client.Dial("tcp", target)
	if err != nil {
		return fmt.Errorf("nothing accepts connections on port %d in session %s (%s); start the program that serves it there first, then run port-forward again", remote, sess.ID, channelError(err))
	}
	probe.Close()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(local)))
	if err != nil && local == remote {
		return fmt.Errorf("local port %d is in use, perhaps by the session itself: a session on the local runtime shares this machine's network, so open 127.0.0.1:%d directly, or forward another local port with `devgpu port-forward %s 0:%d`", local, local, sess.ID, remote)
	}
	if err != nil {
		return fmt.Errorf("listen on local port %d: %w", local, err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	fmt.Fprintf(os.Stderr, "devgpu: forwarding http://127.0.0.1:%d to port %d in session %s; Ctrl-C to stop\n", port, remote, sess.ID)

	// The session ending (or the connection dropping) ends the forwarding.
	lost := make(chan struct{})
	go func() { _ = conn.Client.Wait(); close(lost) }()
	go func() {
		select {
		case <-lost:
		case <-ctx.Done():
		}
		ln.Close()
	}()

	raddr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: remote}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[io.Closer]struct{}{} // local connections and their channels
	)
	track := func(c io.Closer) {
		mu.Lock()
		defer mu.Unlock()
		conns[c] = struct{}{}
	}
	forget := func(c io.Closer) {
		mu.Lock()
		defer mu.Unlock()
		delete(conns, c)
		c.Close()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		track(c)
		wg.Go(func() {
			defer forget(c)
			// The originator lets the agent refuse a connection it dialed
			// itself: this forwarding's own local end as its target.
			ch, err := conn.Client.DialTCP("tcp", c.RemoteAddr().(*net.TCPAddr), raddr)
			if err != nil {
				fmt.Fprintf(os.Stderr, "devgpu: connection to port %d in session %s failed: %s\n", remote, sess.ID, channelError(err))
				return
			}
			track(ch)
			defer forget(ch)
			pipe(c.(*net.TCPConn), ch)
		})
	}
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	if ctx.Err() == nil {
		// Why: who or what ended the session, or how to get back to it.
		return explainEnd(ctx, conn.api, sess.ID, errNoExitStatus)
	}
	fmt.Fprintln(os.Stderr, "devgpu: port forwarding stopped")
	return nil
}

// pipe copies both ways between a local connection and a forwarded
// channel, passing each side's EOF on as a half-close.
func pipe(local *net.TCPConn, remote net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(remote, local)
		if cw, ok := remote.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
	})
	_, _ = io.Copy(local, remote)
	_ = local.CloseWrite()
	wg.Wait()
}

// channelError is the agent's reason for refusing a channel, without the
// SSH library's framing.
func channelError(err error) string {
	var oc *ssh.OpenChannelError
	if errors.As(err, &oc) {
		return oneLine(oc.Message)
	}
	return oneLine(err.Error())
}
