package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// handshakeTimeout bounds the preamble and the SSH handshake, so that a
	// connection that never speaks cannot hold the agent awake.
	handshakeTimeout = 10 * time.Second
	// hangupGrace is how long a child may take to exit after SIGHUP when its
	// channel goes away, before its process group gets SIGKILL.
	hangupGrace = 2 * time.Second
	// sweepTimeout bounds the wait for killed processes that are not our
	// children, which we cannot reap but only watch disappear.
	sweepTimeout = 2 * time.Second
)

// Config configures Serve.
type Config struct {
	Secret   string        // every connection must start with WritePreamble(secret); others are closed
	Dir      string        // working directory of shells and commands ("" = agent's cwd)
	Shell    string        // login shell for `shell` requests ("" = $SHELL, else /bin/bash, else /bin/sh)
	Env      []string      // base environment of child processes (nil = os.Environ())
	IdleExit time.Duration // Serve returns nil after this long with no open connection (0 = never; longer around a job: job.go)
	// KeepLimit is how long a kept shell (one whose client asked to resume
	// it after a dropped connection, sdk.KeepRequest) may stay detached
	// before it is hung up (0 = IdleExit; both 0 = until Serve returns).
	KeepLimit time.Duration
	Logger    *slog.Logger // nil = discard

	// Devices are the GPU ids the session may use, when the engine chose
	// them (VisibleDevices); processes get them as CUDA_VISIBLE_DEVICES
	// unless Env sets that already.
	Devices []string

	keptOutput int           // tests: the output a kept shell keeps (0 = keptOutputSize)
	jobOutput  int           // tests: the output the job's queue holds (0 = jobQueueSize)
	jobLinger  time.Duration // tests: how long an exited job waits to be collected (0 = jobExitLinger)
}

// server is the state of one Serve call.
type server struct {
	cfg   Config
	shell string
	envMu sync.Mutex
	env   []string // replaced, never changed in place: see setEnv
	ssh   *ssh.ServerConfig
	log   *slog.Logger

	mu    sync.Mutex
	conns int              // open connections, for IdleExit
	idle  *time.Timer      // nil without IdleExit
	procs map[int]struct{} // sessions whose processes may outlive their channel

	activity activity              // last user activity, for the control plane's idle timeout
	forwards forwards              // connections direct-tcpip dialed, to refuse loops
	users    int                   // under mu: connections that have opened a channel (see copyPlace)
	smu      sync.Mutex            // guards sessions
	sessions map[*session]struct{} // sessions running a child, of every connection: they get notices

	kept           keptShells // shells that outlive their channel (keep.go)
	keptOutputSize int        // the output each keeps: keptOutputSize, smaller in tests

	jobMu        sync.Mutex     // guards job, and serialises StartJobs
	job          *job           // the session's job (job.go), nil until StartJob
	jobRunning   bool           // under mu: the job's command runs, for IdleExit
	jobUnsent    bool           // under mu: the job exited, and its end was not sent yet (idleAfter)
	jobs         sync.WaitGroup // the job's run goroutine
	jobQueueSize int            // the output the job's queue holds: jobQueueSize, smaller in tests
}

// Serve accepts connections on ln until ctx is done or IdleExit passes, serving each
// as one SSH connection. When it returns, every process it started (and their process
// groups) has been killed and waited for.
//
// Serve closes ln. It returns nil when it stopped because of ctx or IdleExit.
// Processes that leave their session on purpose (setsid) are out of its reach;
// the runtime's Stop ends those with the rest of the session.
//
// When the process is PID 1 (the oci runtime's containers), Serve also reaps
// the orphans that the kernel reparents to it (see reaper).
func Serve(ctx context.Context, ln net.Listener, cfg Config) error {
	defer ln.Close()
	s, err := newServer(cfg)
	if err != nil {
		return err
	}
	unignoreSignals()
	// As a container's init, collect the orphans of the session; stop only
	// after the sweep, whose victims become zombies too.
	defer orphans.hold()()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(ctx, func() { ln.Close() })()
	if cfg.IdleExit > 0 {
		s.idle = time.AfterFunc(cfg.IdleExit, func() {
			s.mu.Lock()
			idle := s.conns == 0 && !s.jobRunning
			s.mu.Unlock()
			if idle {
				s.log.Info("idle, exiting", "idle_exit", cfg.IdleExit)
				cancel()
			}
		})
		defer s.idle.Stop()
	}

	var wg sync.WaitGroup
	var backoff time.Duration
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(aerr, net.ErrClosed) {
				err = fmt.Errorf("agent: accept: %w", aerr)
				break
			}
			// Like net/http: ride out EMFILE and friends instead of dying.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", aerr, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		s.connOpened()
		wg.Go(func() {
			defer s.connClosed()
			s.serveConn(ctx, c)
		})
	}
	cancel()
	wg.Wait()
	s.kept.wg.Wait() // hung up as ctx ended
	s.jobs.Wait()    // killed as ctx ended; no connection is left to start one
	s.sweep()
	return err
}

func newServer(cfg Config) (*server, error) {
	s := &server{cfg: cfg, env: cfg.Env, log: cfg.Logger, procs: map[int]struct{}{}, sessions: map[*session]struct{}{}, keptOutputSize: keptOutputSize, jobQueueSize: jobQueueSize}
	s.activity.touch()
	if s.env == nil {
		s.env = os.Environ()
	}
	if cfg.keptOutput > 0 {
		s.keptOutputSize = cfg.keptOutput
	}
	if cfg.jobOutput > 0 {
		s.jobQueueSize = cfg.jobOutput
	}
	s.env = withDevices(s.env, cfg.Devices)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if s.shell, err = findShell(cfg.Shell, s.env); err != nil {
		return nil, err
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("agent: host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, fmt.Errorf("agent: host key: %w", err)
	}
	// The tunnel to the socket is authenticated and authorised, and the
	// preamble proves the control plane brokered it: SSH auth stays trivial.
	s.ssh = &ssh.ServerConfig{NoClientAuth: true, ServerVersion: "SSH-2.0-devgpu-agent"}
	// AES-GCM only: a client takes the first of its ciphers that the server
	// offers, and OpenSSH lists chacha20-poly1305 first, which x/crypto runs
	// at a third of AES-GCM's throughput (and aes-ctr+hmac at a fifth).
	s.ssh.Ciphers = []string{ssh.CipherAES128GCM, ssh.CipherAES256GCM}
	s.ssh.AddHostKey(signer)
	return s, nil
}

// ignoredSink takes the signals that unignoreSignals handles, and drops them.
var ignoredSink = make(chan os.Signal, 1)

// unignoreSignals turns the signals this process ignores into signals it
// handles and drops. The agent sees no difference, but its children do:
// exec keeps an ignored signal ignored and resets a handled one to its
// default, and children should start with defaults, as sshd's do. A shell
// that inherits an ignored SIGHUP outlives its hangup; one that inherits an
// ignored SIGINT shrugs off ^C.
func unignoreSignals() {
	for _, sig := range []os.Signal{
		syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGPIPE,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU,
	} {
		if signal.Ignored(sig) {
			signal.Notify(ignoredSink, sig)
		}
	}
}

// findShell resolves the shell once, so that a missing one fails Serve
// rather than every request.
func findShell(shell string, env []string) (string, error) {
	if shell != "" {
		path, err := exec.LookPath(shell)
		if err != nil {
			return "", fmt.Errorf("agent: shell: %w", err)
		}
		return path, nil
	}
	for _, sh := range []string{lookupEnv(env, "SHELL"), "/bin/bash", "/bin/sh"} {
		if path, err := exec.LookPath(sh); err == nil {
			return path, nil
		}
	}
	return "", errors.New("agent: no shell found")
}

func lookupEnv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, _ := strings.Cut(env[i], "="); k == key {
			return v
		}
	}
	return ""
}

func (s *server) connOpened() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns++
	if s.idle != nil {
		s.idle.Stop()
	}
}

func (s *server) connClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns--; s.conns == 0 && s.idle != nil {
		s.idle.Reset(s.idleAfter())
	}
}

// idleAfter is how long the agent waits with no connection open before
// it exits (when it is not running a job): IdleExit, or, while the job's
// end was not sent, at least as long as the job's exit waits for a
// collector. Called with mu held.
func (s *server) idleAfter() time.Duration {
	if !s.jobUnsent {
		return s.cfg.IdleExit
	}
	linger := s.cfg.jobLinger
	if linger == 0 {
		linger = jobExitLinger
	}
	return max(s.cfg.IdleExit, linger)
}

func (s *server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()

	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	control, err := readPreamble(c, s.cfg.Secret)
	if err != nil {
		s.log.Warn("connection refused", "err", err)
		return
	}
	sc, chans, reqs, err := ssh.NewServerConn(c, s.ssh)
	if err != nil {
		s.log.Warn("ssh handshake failed", "err", err)
		return
	}
	defer sc.Close()
	_ = c.SetDeadline(time.Time{})

	var wg sync.WaitGroup
	defer wg.Wait()
	// Activity, notices and the job for the control plane; "no" to the rest.
	wg.Go(func() { s.serveGlobal(ctx, reqs, control) })
	cs := &connState{}
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			s.opened(cs)
			wg.Go(func() { s.serveSession(ctx, nc, cs) })
		case "direct-tcpip": // ssh -L, VS Code Remote-SSH, devgpu port-forward
			s.opened(cs)
			cs.usedForMore()
			wg.Go(func() { s.serveDirectTCPIP(ctx, nc) })
		case jobOutputChannel:
			if !control {
				// A user's tunnel carries the same secret; the output
				// belongs to the control plane, which keeps it.
				_ = nc.Reject(ssh.Prohibited, "only the control plane's own connection may read the job's output")
				continue
			}
			wg.Go(func() { s.serveJobOutput(ctx, nc) })
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
		}
	}
}

// linger remembers a session whose process group outlived its leader (a
// background job), so that Serve can kill it when it returns, and forgets
// the ones that have died since, which keeps the set small. On shutdown it
// keeps every session: jobs of a terminal session live in process groups of
// their own, which only the sweep finds.
func (s *server) linger(ctx context.Context, sid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		s.procs[sid] = struct{}{}
		return
	}
	for id := range s.procs {
		if syscall.Kill(-id, 0) != nil {
			delete(s.procs, id)
		}
	}
	if syscall.Kill(-sid, 0) == nil {
		s.procs[sid] = struct{}{}
	}
}

// sweep kills what is left of the sessions Serve started and waits until it
// is gone.
func (s *server) sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.procs) == 0 {
		return
	}
	deadline := time.Now().Add(sweepTimeout)
	for {
		members, scanned := liveSessions()
		alive := 0
		for sid := range s.procs {
			if syscall.Kill(-sid, syscall.SIGKILL) == nil && !scanned {
				alive++
			}
			for _, pid := range members[sid] {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				alive++
			}
		}
		if alive == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.log.Warn("processes survived SIGKILL", "count", alive)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// environ is the environment new processes start with.
func (s *server) environ() []string {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	return s.env
}

// setEnv sets a variable for processes started from now on. It builds a
// new slice, so environments already handed out stay as they were.
func (s *server) setEnv(name, value string) {
	s.envMu.Lock()
	defer s.envMu.Unlock()
	env := make([]string, 0, len(s.env)+1)
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, name+"=") {
			env = append(env, kv)
		}
	}
	s.env = append(env, name+"="+value)
}
