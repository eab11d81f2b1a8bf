// Package local is the runtime of the embedded default: each session is a
// `devgpu agent` process and its process group on this host, with its own
// home directory. It isolates nothing beyond that; the oci runtime does.
//
// A session has no mount namespace, so its persistent workspace
// (runtime.Spec.Workspace) is not mounted: $HOME/workspace is a symlink to
// the host directory, and DEVGPU_WORKSPACE names the directory itself.
// WorkspaceReadOnly cannot be enforced: the session runs as the control
// plane's user and can write wherever it can. It is only passed on as a
// hint, DEVGPU_WORKSPACE_READONLY=1.
package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
)

var _ runtime.Runtime = (*Runtime)(nil)

// Config configures the local runtime.
type Config struct {
	// Dir holds one directory per session: the agent's socket, pid file,
	// log and the session's home.
	Dir string
	// AgentCommand starts an agent; the runtime appends its flags. The
	// default is this executable's `agent` subcommand.
	AgentCommand []string
	// StartTimeout bounds how long an agent may take to listen.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// Runtime runs sessions as local process groups.
type Runtime struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	// exited holds, for agents this process started, a channel closed when
	// the agent has been waited for; agents of an earlier control plane are
	// found through their pid files instead.
	exited map[string]chan struct{}
}

// New returns a local runtime that keeps its sessions under cfg.Dir.
func New(cfg Config) (*Runtime, error) {
	if cfg.Dir == "" {
		return nil, errors.New("local runtime: no session directory configured")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	if len(cfg.AgentCommand) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("local runtime: find own executable: %w", err)
		}
		cfg.AgentCommand = []string{self, "agent"}
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Runtime{cfg: cfg, log: cfg.Logger, exited: map[string]chan struct{}{}}, nil
}

// Name implements runtime.Runtime.
func (r *Runtime) Name() string { return "local" }

func (r *Runtime) dir(id string) string        { return filepath.Join(r.cfg.Dir, id) }
func (r *Runtime) socketPath(id string) string { return filepath.Join(r.dir(id), "agent.sock") }
func (r *Runtime) pidPath(id string) string    { return filepath.Join(r.dir(id), "agent.pid") }

// HomeDir is the session's working directory and HOME, removed with the
// session (unlike its persistent workspace, which HomeDir/workspace links
// to).
func (r *Runtime) HomeDir(id string) string { return filepath.Join(r.dir(id), "home") }

// workspaceLink is the name, in the session's home, of the symlink to its
// persistent workspace.
const workspaceLink = "workspace"

// workspaceDir returns the absolute path of the spec's workspace, "" for
// none, after checking that it is an existing directory: the runtime
// creates nothing outside it.
func workspaceDir(spec runtime.Spec) (string, error) {
	if spec.Workspace == "" {
		return "", nil
	}
	abs, err := filepath.Abs(spec.Workspace)
	if err != nil {
		return "", fmt.Errorf("local runtime: workspace: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("local runtime: workspace %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("local runtime: workspace %s is not a directory", abs)
	}
	return abs, nil
}

// Start implements runtime.Runtime.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (err error) {
	id := spec.SessionID
	if !runtime.ValidID(id) {
		return fmt.Errorf("local runtime: invalid session id %q", id)
	}
	if sock := r.socketPath(id); len(sock) > 100 {
		return fmt.Errorf("local runtime: socket path %s is longer than unix sockets allow; use a shorter data directory", sock)
	}
	workspace, err := workspaceDir(spec)
	if err != nil {
		return err
	}
	if err := os.Mkdir(r.dir(id), 0o700); err != nil {
		return fmt.Errorf("local runtime: create session directory: %w", err)
	}
	defer func() {
		if err != nil {
			_ = r.Stop(context.WithoutCancel(ctx), id)
		}
	}()
	home := r.HomeDir(id)
	if err := os.Mkdir(home, 0o700); err != nil {
		return fmt.Errorf("local runtime: create home: %w", err)
	}
	// A symlink, not a mount: Stop's os.RemoveAll removes the link and
	// never follows it into the workspace.
	if workspace != "" {
		if err := os.Symlink(workspace, filepath.Join(home, workspaceLink)); err != nil {
			return fmt.Errorf("local runtime: link workspace: %w", err)
		}
	}
	logFile, err := os.OpenFile(filepath.Join(r.dir(id), "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("local runtime: %w", err)
	}
	defer logFile.Close()

	args := append(append([]string(nil), r.cfg.AgentCommand[1:]...),
		"--session", id, "--socket", r.socketPath(id), "--dir", home,
		"--idle-exit", spec.IdleExit.String())
	cmd := exec.Command(r.cfg.AgentCommand[0], args...)
	cmd.Dir = home
	cmd.Env = sessionEnviron(spec, home, workspace)
	cmd.Stderr = logFile
	// Its own process group, so Stop can signal the agent and every
	// command that stays in its group at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The secret travels on stdin, not in argv or the environment, where
	// other processes of this user could read it.
	cmd.Stdin = strings.NewReader(spec.AgentSecret + "\n")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("local runtime: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("local runtime: start agent: %w", err)
	}
	exited := make(chan struct{})
	r.mu.Lock()
	r.exited[id] = exited
	r.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := os.WriteFile(r.pidPath(id), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		return fmt.Errorf("local runtime: %w", err)
	}

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected agent output %q", line)
		}
		ready <- err
	}()
	timer := time.NewTimer(r.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("local runtime: agent did not start (see %s): %w", logFile.Name(), err)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("local runtime: agent did not listen within %s (see %s)", r.cfg.StartTimeout, logFile.Name())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sessionEnviron is the control plane's environment without its own
// credentials, plus the session contract and, with a workspace (the
// absolute path of spec.Workspace), where it is.
func sessionEnviron(spec runtime.Spec, home, workspace string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "DEVGPU_") || name == "HOME" || name == "PWD" || name == "OLDPWD" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home)
	for k, v := range runtime.SessionEnv(spec) {
		if workspace != "" && (k == "DEVGPU_WORKSPACE" || k == "DEVGPU_WORKSPACE_READONLY") {
			continue // the runtime's word on its workspace wins
		}
		env = append(env, k+"="+v)
	}
	if workspace != "" {
		env = append(env, "DEVGPU_WORKSPACE="+workspace)
		if spec.WorkspaceReadOnly {
			// Not enforced (see the package doc): a hint to the session.
			env = append(env, "DEVGPU_WORKSPACE_READONLY=1")
		}
	}
	return env
}

// Connect implements runtime.Runtime.
func (r *Runtime) Connect(ctx context.Context, id string) (net.Conn, error) {
	if !runtime.ValidID(id) {
		return nil, runtime.ErrNotFound
	}
	return runtime.DialSocket(ctx, id, r.socketPath(id))
}

// Stop implements runtime.Runtime. It asks the agent to end its commands,
// then kills the process group, then sweeps for any process that left the
// group (setsid, double fork) but still carries the session's id.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if !runtime.ValidID(id) {
		return nil
	}
	pid := r.agentPID(id)
	if pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		r.waitExit(ctx, id, pid, 3*time.Second)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		r.waitExit(ctx, id, pid, time.Second)
	}
	if err := killTagged(id); err != nil {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	r.mu.Lock()
	delete(r.exited, id)
	r.mu.Unlock()
	// RemoveAll removes the home's workspace symlink without following it:
	// the persistent workspace stays.
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("stop session %s: remove its directory: %w", id, err)
	}
	return nil
}

// agentPID returns the live agent's pid for the session, or 0.
func (r *Runtime) agentPID(id string) int {
	b, err := os.ReadFile(r.pidPath(id))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !isAgent(pid, id) {
		return 0
	}
	return pid
}

func (r *Runtime) waitExit(ctx context.Context, id string, pid int, limit time.Duration) {
	r.mu.Lock()
	exited := r.exited[id]
	r.mu.Unlock()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if exited != nil {
			select {
			case <-exited:
				return
			case <-time.After(5 * time.Millisecond):
			}
		} else if !isAgent(pid, id) {
			return
		} else {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// List implements runtime.Runtime: every session directory whose agent is
// alive. Directories of dead agents are not listed; Stop cleans them.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	entries, err := os.ReadDir(r.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	var out []runtime.Instance
	for _, e := range entries {
		if !e.IsDir() || !runtime.ValidID(e.Name()) {
			continue
		}
		if r.agentPID(e.Name()) == 0 {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, runtime.Instance{SessionID: e.Name(), StartedAt: info.ModTime()})
	}
	return out, nil
}

// Orphans returns session directories whose agent is gone, so that the
// control plane can stop (clean) them.
func (r *Runtime) Orphans() []string {
	entries, _ := os.ReadDir(r.cfg.Dir)
	var ids []string
	for _, e := range entries {
		if e.IsDir() && runtime.ValidID(e.Name()) && r.agentPID(e.Name()) == 0 {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// isAgent reports whether pid is the agent of the session, so that a
// recycled pid is never signalled.
func isAgent(pid int, id string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--session" && args[i+1] == id {
			return !isZombie(pid)
		}
	}
	return false
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name, which may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// killTagged kills every process whose environment carries the session's
// DEVGPU_SESSION_ID, until none is left.
func killTagged(id string) error {
	tag := []byte("DEVGPU_SESSION_ID=" + id + "\x00")
	for range 20 {
		pids, err := taggedPIDs(tag)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("processes of the session keep appearing")
}

func taggedPIDs(tag []byte) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if environHas(pid, tag) && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// environHas reports whether the process's environment holds the entry
// tag (which ends in NUL); entries are NUL-separated, so a whole-entry match
// is one at the start or one right after a NUL.
func environHas(pid int, tag []byte) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	return bytes.HasPrefix(env, tag) || bytes.Contains(env, append([]byte{0}, tag...))
}
