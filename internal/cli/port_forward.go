package cli

import (
	"context"
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
)

func newPortForwardCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "port-forward SESSION LOCAL:REMOTE",
		Short: "Forward a local TCP port to a port inside a running session",
		Long: `Listen on 127.0.0.1:LOCAL and carry each connection through the session's
tunnel to 127.0.0.1:REMOTE inside the session: for Jupyter, TensorBoard and
the like. SESSION is a session id, or ":" for your only running session;
PORT alone means LOCAL and REMOTE are the same, and LOCAL 0 picks a free port.
It runs until Ctrl-C.`,
		Example: `  devgpu port-forward 3f9c2a 8888:8888
  devgpu port-forward : 6006`,
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
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(local)))
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

	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(remote))
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
			ch, err := conn.Client.Dial("tcp", target)
			if err != nil {
				fmt.Fprintf(os.Stderr, "devgpu: connection to port %d in session %s failed: %s\n", remote, sess.ID, oneLine(err.Error()))
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
		return fmt.Errorf("session %s ended, or the connection to it was lost", sess.ID)
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
