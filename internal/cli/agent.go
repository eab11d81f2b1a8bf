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
	dir      string
	idleExit time.Duration
}

// newAgentCmd is the process a runtime starts inside every session. It
// reads the session secret from stdin, listens on --socket, says "ready"
// on stdout, and serves until told to stop.
func newAgentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:    "agent",
		Short:  "Serve a session (started by the runtime, not by people)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return runAgent(ctx, o, os.Stdin, os.Stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.session, "session", "", "session id (identifies the process to the runtime)")
	f.StringVar(&o.socket, "socket", "", "unix socket to listen on")
	f.StringVar(&o.dir, "dir", "", "working directory of the session's shells")
	f.DurationVar(&o.idleExit, "idle-exit", 0, "exit after this long without connections (0: never)")
	_ = cmd.MarkFlagRequired("socket")
	return cmd
}

func runAgent(ctx context.Context, o agentOptions, stdin io.Reader, stdout *os.File) error {
	secret, err := bufio.NewReader(stdin).ReadString('\n')
	secret = strings.TrimSpace(secret)
	if err != nil || secret == "" {
		return errors.New("agent: no session secret on stdin")
	}
	_ = os.Remove(o.socket) // a stale socket of an earlier agent
	ln, err := net.Listen("unix", o.socket)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := os.Chmod(o.socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("agent: %w", err)
	}
	if _, err := io.WriteString(stdout, "ready\n"); err != nil {
		ln.Close()
		return fmt.Errorf("agent: report ready: %w", err)
	}
	stdout.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("session_id", o.session)
	log.Info("agent listening", "socket", o.socket)
	err = agent.Serve(ctx, ln, agent.Config{Secret: secret, Dir: o.dir, IdleExit: o.idleExit, Logger: log})
	log.Info("agent stopped", "err", err)
	return err
}
