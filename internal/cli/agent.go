//go:build linux

package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/agent"
)

type agentOptions struct {
	session  string
	socket   string
	listenFD int
	dir      string
	idleExit time.Duration
}

// newAgentCmd is the process a runtime starts inside every session. It
// reads the session secret from stdin, listens on --socket (or serves the
// listening socket the runtime passed as --listen-fd), says "ready" on
// stdout, and serves until told to stop.
func newAgentCmd() *cobra.Command {
	var o agentOptions
	var sb agent.Sandbox // sandbox_linux.go in internal/agent
	cmd := &cobra.Command{
		Use:    "agent",
		Short:  "Serve a session (started by the runtime, not by people)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if sb.Enabled { // the local runtime: set up, then run again without these flags
				return agent.EnterSandbox(sb, os.Args, o.dir)
			}
			if err := agent.ProtectSecrets(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return runAgent(ctx, o, os.Stdin, os.Stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.session, "session", "", "session id (identifies the process to the runtime)")
	f.StringVar(&o.socket, "socket", "", "unix socket to listen on")
	f.IntVar(&o.listenFD, "listen-fd", 0, "serve this inherited listening unix socket instead of --socket")
	f.StringVar(&o.dir, "dir", "", "working directory of the session's shells")
	f.DurationVar(&o.idleExit, "idle-exit", 0, "exit after this long without connections (0: never)")
	f.BoolVar(&sb.Enabled, "sandbox", false, "set up the local runtime's sandbox first (as PID 1 of new user, mount and pid namespaces)")
	f.StringArrayVar(&sb.Hide, "sandbox-hide", nil, "sandbox: cover this path with an empty read-only mount")
	f.StringArrayVar(&sb.Bind, "sandbox-bind", nil, "sandbox: show this path at its place, also under a hidden one")
	f.StringArrayVar(&sb.BindRO, "sandbox-bind-ro", nil, "sandbox: show this path at its place, read-only")
	f.IntVar(&sb.UID, "sandbox-uid", 0, "sandbox: run the agent as this uid and --sandbox-gid in a nested user namespace (a server that is not root)")
	f.IntVar(&sb.GID, "sandbox-gid", 0, "sandbox: see --sandbox-uid")
	cmd.MarkFlagsOneRequired("socket", "listen-fd")
	cmd.MarkFlagsMutuallyExclusive("socket", "listen-fd")
	return cmd
}

func runAgent(ctx context.Context, o agentOptions, stdin io.Reader, stdout *os.File) error {
	secret, err := bufio.NewReader(stdin).ReadString('\n')
	secret = strings.TrimSpace(secret)
	if err != nil || secret == "" {
		return errors.New("agent: no session secret on stdin")
	}
	ln, err := listen(o)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(stdout, "ready\n"); err != nil {
		ln.Close()
		return fmt.Errorf("agent: report ready: %w", err)
	}
	stdout.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("session_id", o.session)
	log.Info("agent listening", "socket", o.socket, "listen_fd", o.listenFD)
	err = agent.Serve(ctx, ln, agent.Config{Secret: secret, Dir: o.dir, IdleExit: o.idleExit, Logger: log})
	log.Info("agent stopped", "err", err)
	return err
}

// listen returns the agent's listener: the inherited one of --listen-fd
// (the oci runtime creates the socket in a host directory the session cannot
// reach, so that nothing in the session can change what the host dials), or
// a new socket at --socket.
func listen(o agentOptions) (net.Listener, error) {
	if o.listenFD > 0 {
		f := os.NewFile(uintptr(o.listenFD), "listen-fd")
		if f == nil {
			return nil, fmt.Errorf("agent: --listen-fd %d is not an open file descriptor", o.listenFD)
		}
		ln, err := net.FileListener(f)
		f.Close() // FileListener holds its own duplicate
		if err != nil {
			return nil, fmt.Errorf("agent: --listen-fd %d is not a listening socket: %w", o.listenFD, err)
		}
		return ln, nil
	}
	_ = os.Remove(o.socket) // a stale socket of an earlier agent
	ln, err := net.Listen("unix", o.socket)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := os.Chmod(o.socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	return ln, nil
}
