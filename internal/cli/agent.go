//go:build linux

package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
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
	"github.com/devgpu/devgpu/internal/link"
)

type agentOptions struct {
	session  string
	socket   string
	listenFD int
	dir      string
	idleExit time.Duration

	secretFile string // the agent secret, instead of stdin

	// A remote runtime's agent (a Pod) dials out to the control plane.
	link               string // the control plane's link URL
	linkCredentialFile string
	linkCAFile         string
}

// newAgentCmd is the process a runtime starts inside every session. It
// reads the session secret from stdin (or --secret-file), listens on
// --socket (or serves the listening socket the runtime passed as
// --listen-fd), says "ready" on stdout, and serves until told to stop.
// With --link it listens nowhere: it dials out to the control plane and
// serves the streams the control plane opens over that link.
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
	f.StringVar(&o.secretFile, "secret-file", "", "read the session secret from this file instead of stdin")
	f.StringVar(&o.link, "link", "", "dial out to the control plane's agent link at this https URL instead of listening (remote runtimes)")
	f.StringVar(&o.linkCredentialFile, "link-credential-file", "", "with --link: the file holding the session's link credential")
	f.StringVar(&o.linkCAFile, "link-ca-file", "", "with --link: PEM certificates to verify the control plane with, instead of the system's")
	f.StringVar(&o.dir, "dir", "", "working directory of the session's shells")
	f.DurationVar(&o.idleExit, "idle-exit", 0, "exit after this long without connections (0: never)")
	f.BoolVar(&sb.Enabled, "sandbox", false, "set up the local runtime's sandbox first (as PID 1 of new user, mount and pid namespaces)")
	f.StringArrayVar(&sb.Hide, "sandbox-hide", nil, "sandbox: cover this path with an empty read-only mount")
	f.StringArrayVar(&sb.Bind, "sandbox-bind", nil, "sandbox: show this path at its place, also under a hidden one")
	f.StringArrayVar(&sb.BindRO, "sandbox-bind-ro", nil, "sandbox: show this path at its place, read-only")
	f.IntVar(&sb.UID, "sandbox-uid", 0, "sandbox: run the agent as this uid and --sandbox-gid in a nested user namespace (a server that is not root)")
	f.IntVar(&sb.GID, "sandbox-gid", 0, "sandbox: see --sandbox-uid")
	cmd.MarkFlagsOneRequired("socket", "listen-fd", "link")
	cmd.MarkFlagsMutuallyExclusive("socket", "listen-fd", "link")
	cmd.MarkFlagsRequiredTogether("link", "link-credential-file")
	cmd.AddCommand(newAgentInstallCmd())
	return cmd
}

// newAgentInstallCmd copies this executable elsewhere: the kube runtime's
// init container runs it from the agent image, which has no shell.
func newAgentInstallCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "install DEST",
		Short: "Copy this executable to DEST (a file, or a directory to put devgpu in), mode 0755",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return agent.Install(args[0])
		},
	}
}

func runAgent(ctx context.Context, o agentOptions, stdin io.Reader, stdout *os.File) error {
	secret, err := readSecret(o, stdin)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("session_id", o.session)
	cfg := agent.Config{Secret: secret, Dir: o.dir, IdleExit: o.idleExit, Logger: log}
	var ln net.Listener
	if o.link != "" {
		lc, err := linkConfig(o, log)
		if err != nil {
			return err
		}
		// The engine chose the devices; processes see them under CUDA's
		// name too.
		cfg.Devices = lc.Report.Devices
		ln = link.Listen(ctx, lc)
		log.Info("agent linking to the control plane", "url", o.link, "node", lc.Report.Node, "devices", lc.Report.Devices)
	} else {
		if ln, err = listen(o); err != nil {
			return err
		}
		if _, err := io.WriteString(stdout, "ready\n"); err != nil {
			ln.Close()
			return fmt.Errorf("agent: report ready: %w", err)
		}
		stdout.Close()
		log.Info("agent listening", "socket", o.socket, "listen_fd", o.listenFD)
	}
	err = agent.Serve(ctx, ln, cfg)
	if errors.Is(err, link.ErrStopped) {
		err = nil // the control plane stopped the session: a clean end
	}
	log.Info("agent stopped", "err", err)
	return err
}

// readSecret reads the agent secret once, from --secret-file or stdin.
func readSecret(o agentOptions, stdin io.Reader) (string, error) {
	if o.secretFile != "" {
		b, err := os.ReadFile(o.secretFile)
		if err != nil {
			return "", fmt.Errorf("agent: read the session secret: %w; the runtime must mount it at --secret-file", err)
		}
		if secret := strings.TrimSpace(string(b)); secret != "" {
			return secret, nil
		}
		return "", fmt.Errorf("agent: --secret-file %s is empty; the runtime must write the session's agent secret there", o.secretFile)
	}
	secret, err := bufio.NewReader(stdin).ReadString('\n')
	secret = strings.TrimSpace(secret)
	if err != nil || secret == "" {
		return "", errors.New("agent: no session secret on stdin; the runtime must write it there, or pass --secret-file")
	}
	return secret, nil
}

// linkConfig reads the link's credential and CA once, and what the agent
// reports about itself: its node (DEVGPU_NODE, which a Pod gets from the
// downward API, else the host name) and the devices it sees.
func linkConfig(o agentOptions, log *slog.Logger) (link.AgentConfig, error) {
	if o.session == "" {
		return link.AgentConfig{}, errors.New("agent: --link needs --session, the id the control plane knows the session by")
	}
	b, err := os.ReadFile(o.linkCredentialFile)
	if err != nil {
		return link.AgentConfig{}, fmt.Errorf("agent: read the link credential: %w; the runtime must mount it at --link-credential-file", err)
	}
	credential := strings.TrimSpace(string(b))
	if credential == "" {
		return link.AgentConfig{}, fmt.Errorf("agent: --link-credential-file %s is empty; the runtime must write the session's link credential there", o.linkCredentialFile)
	}
	var tlsConfig *tls.Config
	if o.linkCAFile != "" {
		pem, err := os.ReadFile(o.linkCAFile)
		if err != nil {
			return link.AgentConfig{}, fmt.Errorf("agent: read --link-ca-file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return link.AgentConfig{}, fmt.Errorf("agent: --link-ca-file %s holds no PEM certificate; give the control plane's CA certificate", o.linkCAFile)
		}
		tlsConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	node := os.Getenv("DEVGPU_NODE")
	if node == "" {
		node, _ = os.Hostname()
	}
	return link.AgentConfig{
		URL:        o.link,
		SessionID:  o.session,
		Credential: credential,
		TLS:        tlsConfig,
		Report:     link.Report{Node: node, Devices: agent.VisibleDevices()},
		Log:        log,
	}, nil
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
