package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/devgpu/devgpu/sdk"
)

// sessionFlags are the flags shared by shell and run.
type sessionFlags struct {
	project string
	gpuType string
	region  string
	image   string
	attach  string
	wait    time.Duration
}

// defaultWait is how long a bare --wait waits: as long as the server allows.
const defaultWait = "24h"

// bareWait is defaultWait as a duration.
var bareWait, _ = time.ParseDuration(defaultWait)

func (f *sessionFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.project, "project", "p", "", "project to run in (default: the config's project, else the only project you may use, else \"default\")")
	fl.StringVar(&f.gpuType, "gpu", "", "GPU type, e.g. t4 or a100 (default: any the project allows)")
	fl.StringVar(&f.region, "region", "", "region (default: any)")
	fl.StringVar(&f.image, "image", "", "image name or reference (default: the project's default image)")
	fl.StringVar(&f.attach, "attach", "", "attach to your running session (its ID, or a detached run's name) instead of starting one")
	fl.DurationVar(&f.wait, "wait", 0, "when no GPU may be had now, queue for up to this long (bare --wait: "+defaultWait+")")
	fl.Lookup("wait").NoOptDefVal = defaultWait
}

func newShellCmd() *cobra.Command {
	var f sessionFlags
	cmd := &cobra.Command{
		Use:   "shell",
		Short: "Open an interactive shell in a new GPU session",
		Long: `Open an interactive shell in a new session with its own GPU.
The session ends when the shell exits, and its GPU is freed. If the connection
drops, reattach within the project's detach grace with --attach ID.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, sess, err := openSession(cmd.Context(), f, true)
			if err != nil {
				return err
			}
			defer conn.Close()
			return explainEnd(cmd.Context(), conn.api, sess.ID, runShell(conn, sess))
		},
	}
	f.register(cmd)
	return cmd
}

func newRunCmd() *cobra.Command {
	var f sessionFlags
	var d detachFlags
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARG...]",
		Short: "Run a command in a new GPU session and pass its exit status through",
		Long: `Run a command in a new session with its own GPU, then end the session.
Standard output and error stay apart and the command's exit status is devgpu's.

Several words run as that command and its arguments, exactly as given
(devgpu run -- sh -c 'exit 3' exits 3). A single word is a command line for
the session's shell, so devgpu run -- 'echo $CUDA_VISIBLE_DEVICES' expands
inside the session.

--detach starts the command and returns at once, printing the run's id: it
runs with no client attached, its output is kept by the server (devgpu logs
ID -f), and the session ends when it exits (devgpu wait ID exits with its
status). With --wait, a run that cannot start now queues on the server and
starts by itself when it may.`,
		Example: `  devgpu run -- nvidia-smi
  devgpu run --detach --name train-1 -- python train.py --epochs 10
  devgpu logs train-1 -f`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := d.check(cmd, f, args); err != nil {
				return err
			}
			if d.detach {
				return runDetached(cmd.Context(), f, d.name, commandLine(args))
			}
			conn, sess, err := openSession(cmd.Context(), f, false)
			if err != nil {
				return err
			}
			defer conn.Close()
			return explainEnd(cmd.Context(), conn.api, sess.ID, runCommand(conn, commandLine(args)))
		},
	}
	// Everything after the command's first word belongs to the command.
	cmd.Flags().SetInterspersed(false)
	f.register(cmd)
	d.register(cmd)
	return cmd
}

// sessionConn is an SSH connection to a session's agent through the
// server's tunnel.
type sessionConn struct {
	*ssh.Client
	api    *sdk.Client
	tunnel *sdk.Tunnel
	// command: a shell or command ran, and then only its exit status says
	// that it ended on purpose; exited: it reported one.
	command, exited bool
}

// detachWait bounds how long leaving waits for the server to record it.
const detachWait = 3 * time.Second

// Close ends the connection. One that ended on purpose leaves the session
// (sdk.Tunnel.Leave) and waits until the server has recorded it: when this
// was the last shell, the session has then ended and its GPU is free, so
// the next `devgpu run` finds it free. Any other end (an agent that died or
// was stopped, a broken connection) counts as vanished, and the session
// waits out its detach grace.
func (c *sessionConn) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), detachWait)
	defer cancel()
	if c.onPurpose() {
		return c.api.CloseTunnel(ctx, c.tunnel, c.Client.Close)
	}
	err := c.Client.Close()
	_, _ = c.api.WaitDetached(ctx, c.tunnel)
	return err
}

// onPurpose reports whether the connection ends on purpose: its command
// reported an exit status (the agent ended it: a shell that ran exit); or,
// without a command (cp, port-forward, a failed start), the tunnel is still
// up, so the end is the CLI's own choice. An agent that dies ends the
// tunnel before anything over it can fail, so it is never taken for one.
func (c *sessionConn) onPurpose() bool {
	if c.command {
		return c.exited
	}
	return !c.tunnel.Ended()
}

// finished notes how the connection's command ended and maps it onto our
// exit status. Without an exit status the tunnel is closed at once (no
// leave): the server then records the shell as vanished and checks the
// agent, so that what the CLI next asks about the session's end is known.
func (c *sessionConn) finished(err error) error {
	var exit *ssh.ExitError
	c.command, c.exited = true, err == nil || errors.As(err, &exit)
	if !c.exited {
		_ = c.Client.Close()
	}
	return exitFrom(err)
}

// openSession starts a session (or finds the one to attach to) and opens
// an SSH connection to its agent through the server's tunnel.
func openSession(ctx context.Context, f sessionFlags, announce bool) (*sessionConn, sdk.Session, error) {
	client, cfg, err := newClient()
	if err != nil {
		return nil, sdk.Session{}, err
	}
	// Ctrl-C while starting gives up cleanly; once the shell runs it is a
	// keystroke for the remote side.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// A session chosen to join (shared and spillover modes) can end just
	// before we connect; then ask again.
	var sess sdk.Session
	var tunnel *sdk.Tunnel
	for attempt := 0; ; attempt++ {
		if sess, err = findSession(ctx, client, cfg, f); err != nil {
			return nil, sess, err
		}
		tunnel, err = client.Connect(ctx, sess.ID)
		if err == nil {
			break
		}
		if f.attach != "" || attempt == 2 || !sdk.IsStatus(err, http.StatusConflict) {
			return nil, sess, err
		}
	}
	if announce && term.IsTerminal(int(os.Stderr.Fd())) {
		fmt.Fprintf(os.Stderr, "devgpu: session %s · %s %s · project %s\r\n", sess.ID, sess.GPUType, strings.Join(sess.GPUs, ","), sess.Project)
	}
	sshConn, chans, reqs, err := ssh.NewClientConn(tunnel, "devgpu", &ssh.ClientConfig{
		User: sess.User,
		// The tunnel is authenticated and authorised by the server, which
		// alone can reach the agent, so the agent's key proves nothing more.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		tunnel.Close()
		return nil, sess, fmt.Errorf("SSH handshake with session %s failed: %w", sess.ID, err)
	}
	return &sessionConn{Client: ssh.NewClient(sshConn, chans, reqs), api: client, tunnel: tunnel}, sess, nil
}

// findSession returns the session to attach to: --attach's, or one the
// server starts (or picks to join) for us, queueing with --wait.
func findSession(ctx context.Context, client *sdk.Client, cfg config, f sessionFlags) (sdk.Session, error) {
	if f.attach != "" {
		sess, err := sessionByRef(ctx, client, f.attach)
		if err != nil {
			return sess, err
		}
		if sess.State != sdk.StateRunning {
			return sess, fmt.Errorf("session %s is %s, not running; start a new one with `devgpu shell`", sess.ID, sess.State)
		}
		return sess, nil
	}
	status := newStatusLine()
	req := f.request(cfg, status, "a GPU session")
	sess, err := createWaiting(ctx, client, req, status.showStart, func(id string) {
		status.set(fmt.Sprintf("queued as %s: the server is unreachable; reconnecting to keep your place", id))
	})
	status.done()
	if err != nil && ctx.Err() != nil {
		return sess, errors.New("interrupted while starting the session; nothing was left behind")
	}
	for _, w := range sess.Warnings {
		fmt.Fprintf(os.Stderr, "devgpu: warning: %s\n", w)
	}
	return sess, err
}

// request is the request for a new session that f asks for, in cfg's
// project by default; status says that what starts (such as "a GPU
// session") is starting.
func (f sessionFlags) request(cfg config, status *statusLine, what string) sdk.CreateSessionRequest {
	project := orDefault(f.project, cfg.Project)
	status.set(strings.TrimSuffix(fmt.Sprintf("starting %s in project %s", what, project), " in project "))
	return sdk.CreateSessionRequest{Project: project, GPUType: f.gpuType, Region: f.region, Image: f.image,
		Wait: sdk.Duration(f.wait), Progress: status.tty}
}

// showStart shows an event of a starting or queued session.
func (s *statusLine) showStart(ev sdk.SessionEvent) {
	switch {
	case ev.Step != "" && ev.Total > 0: // a pull that counts its bytes
		s.set(fmt.Sprintf("%s %d/%d MB", ev.Step, ev.Done>>20, ev.Total>>20))
	case ev.Step != "": // such as a Pod waiting for the scheduler, in its words
		s.set(ev.Step)
	default:
		s.set(fmt.Sprintf("queued, position %d: %s", ev.Position, waitReason(ev.Reason)))
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runShell runs an interactive shell: a PTY in raw mode when stdin is a
// terminal (with window changes forwarded), plain pipes otherwise, as ssh does.
// On a terminal the shell survives a dropped connection (reconnect.go),
// unless the session's agent cannot keep it.
func runShell(conn *sessionConn, sess sdk.Session) error {
	fd := int(os.Stdin.Fd())
	if term.IsTerminal(fd) {
		w, h, err := term.GetSize(fd)
		if err != nil {
			w, h = 80, 24
		}
		shell, err := sdk.OpenKeptShell(conn.Client, terminalType(), sdk.TerminalSize{Rows: h, Columns: w}, terminalModes)
		switch {
		case err == nil:
			old, err := term.MakeRaw(fd)
			if err != nil {
				shell.Close()
				return fmt.Errorf("put the terminal in raw mode: %w", err)
			}
			defer term.Restore(fd, old)
			return runKeptShell(conn, sess, shell, fd)
		case !errors.Is(err, sdk.ErrKeepRefused):
			return fmt.Errorf("start a shell in session %s: %w", sess.ID, err)
		}
		// An agent that does not keep shells: one that ends with its connection.
	}
	s, err := conn.NewSession()
	if err != nil {
		return fmt.Errorf("open a shell in session %s: %w", sess.ID, err)
	}
	defer s.Close()
	if term.IsTerminal(fd) {
		w, h, err := term.GetSize(fd)
		if err != nil {
			w, h = 80, 24
		}
		if err := s.RequestPty(terminalType(), h, w, terminalModes); err != nil {
			return fmt.Errorf("request a terminal: %w", err)
		}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer term.Restore(fd, old)
		stop := watchResize(func() {
			if w, h, err := term.GetSize(fd); err == nil {
				_ = s.WindowChange(h, w)
			}
		})
		defer stop()
	}
	s.Stdin, s.Stdout, s.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := s.Shell(); err != nil {
		return fmt.Errorf("start a shell in session %s: %w", sess.ID, err)
	}
	return conn.finished(s.Wait())
}

// terminalModes are the modes a shell's terminal starts with.
var terminalModes = ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}

// terminalType is the TERM a shell's terminal gets: ours.
func terminalType() string { return orDefault(os.Getenv("TERM"), "xterm-256color") }

// commandLine turns run's arguments into the line the session's shell
// runs: one argument is a command line as it is; several are quoted so
// the command gets them exactly as given.
func commandLine(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

// shellQuote quotes s for a POSIX shell, leaving plain words alone.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@%+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// runCommand runs one command with stdout and stderr apart, forwarding
// the signals that would otherwise just kill the CLI.
func runCommand(conn *sessionConn, command string) error {
	s, err := conn.NewSession()
	if err != nil {
		return fmt.Errorf("open a session channel: %w", err)
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		names := map[os.Signal]ssh.Signal{os.Interrupt: ssh.SIGINT, syscall.SIGTERM: ssh.SIGTERM, syscall.SIGHUP: ssh.SIGHUP}
		for sig := range sigs {
			_ = s.Signal(names[sig])
		}
	}()
	if err := s.Start(command); err != nil {
		return fmt.Errorf("start the command: %w", err)
	}
	return conn.finished(s.Wait())
}

// exitFrom maps the remote end of a command onto our exit status.
func exitFrom(err error) error {
	var exit *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit):
		return exitStatus(exit.ExitStatus())
	case errors.As(err, &missing):
		return errNoExitStatus
	default:
		return fmt.Errorf("%w: %w", errNoExitStatus, err)
	}
}

// statusLine shows what a slow step is doing on stderr: a spinner line
// rewritten in place on a terminal, one line per change otherwise (so a
// queued request says why it waits even in a log), nothing for a start
// that needs no explanation.
type statusLine struct {
	tty bool
	// ownLine starts the line below the cursor, which may be in the middle
	// of a shell's output; since, when set, is shown as seconds elapsed.
	ownLine bool
	since   time.Time
	// announce prints every new message off a terminal, not only queue
	// updates and reconnections.
	announce bool
	mu       sync.Mutex
	msg      string
	printed  string
	shown    bool
	stop     chan struct{}
	finished chan struct{}
}

func newStatusLine() *statusLine {
	s := &statusLine{tty: term.IsTerminal(int(os.Stderr.Fd())), stop: make(chan struct{}), finished: make(chan struct{})}
	if !s.tty {
		close(s.finished)
		return s
	}
	go func() {
		defer close(s.finished)
		frames := []rune("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
		// Quick starts finish before the first frame: no flicker.
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				if s.shown {
					fmt.Fprint(os.Stderr, "\r\033[K")
				}
				return
			case <-t.C:
				s.mu.Lock()
				// One line, redrawn in place: never wider than the
				// terminal, or each frame would wrap onto a new line.
				line := fmt.Sprintf("%c %s…", frames[i%len(frames)], s.msg)
				if !s.since.IsZero() {
					line += fmt.Sprintf(" (%ds)", int(time.Since(s.since).Seconds()))
				}
				line = fitWidth(line, stderrWidth())
				if s.ownLine && !s.shown {
					fmt.Fprint(os.Stderr, "\r\n")
				}
				fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
				s.mu.Unlock()
				s.shown = true
			}
		}
	}()
	return s
}

// set changes the message. Off a terminal only queue updates and
// reconnections are printed, unless the line announces every message.
func (s *statusLine) set(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msg = msg
	if !s.tty && (s.announce || strings.HasPrefix(msg, "queued") || strings.HasPrefix(msg, "reconnecting")) && msg != s.printed {
		fmt.Fprintf(os.Stderr, "devgpu: %s\n", msg)
		s.printed = msg
	}
}

func (s *statusLine) done() {
	if s.tty {
		close(s.stop)
	}
	<-s.finished
}
