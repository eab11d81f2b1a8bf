// Package local is the runtime of the embedded default (`devgpu server
// --dev`): each session is a `devgpu agent` process on this host, running
// as the control plane's user, with its own home directory. It is for one
// person's machine: it isolates the session's files, network and devices
// from nothing that user can reach. What it does keep from a session:
//
//   - The control plane's secrets. The agent starts as the first process of
//     new user, mount and pid namespaces (for root, the user namespace maps
//     uid 0 to itself; for another user, it maps the user to 0, and the
//     agent then runs as the user in a nested user namespace under a small
//     init: neither needs privilege). Before any code of the session runs,
//     it covers with empty read-only mounts the runtime's session directory
//     (every agent's socket, pid file and log), the paths in Config.Hide
//     (the server's data directory with its store and admin token, the CLI
//     config with its token, the server config) and /sys/fs/cgroup, mounts
//     a fresh /proc that shows only the session's processes, then drops
//     every capability and sets no_new_privs (see agent.Sandbox). The
//     secret reaches the agent on stdin, and the agent is non-dumpable.
//   - The server's environment. A session starts with PATH, LANG, LC_ALL,
//     TZ, USER, LOGNAME and SHELL from it, HOME, and the session variables
//     of the contract (runtime.SessionEnv), nothing else.
//   - Escape from its end. A session is its pid namespace: stopping its
//     agent, the namespace's init, kills every process in it, whatever it
//     did to its environment or its process group. Where the pids cgroup is
//     writable (a server running as root), each session also has a cgroup
//     whose pids.max bounds it (Config.MaxPids; all sessions together stay
//     below half of the host's limit), and Stop kills what the cgroup holds.
//     Elsewhere nothing bounds a session's processes: the runtime says so
//     once in the log and through Warnings (`devgpu doctor`).
//
// The runtime lends the host's GPUs (Config.Devices) from a hostgpu.Pool:
// Start takes the devices a session asks for and writes its placement
// into its session directory, where a runtime constructed again over the
// same directory (a restarted control plane) finds it, so that a held
// device is never lent twice; Stop gives them back.
//
// The session's persistent workspace (runtime.Spec.Workspace) is bound at
// its own path ($HOME/workspace links to it; DEVGPU_WORKSPACE names it), and
// read-only when WorkspaceReadOnly. As root, uid 0 without capabilities
// still writes every root-owned file of the host: the local runtime is no
// sandbox against its user, only against reading what the list above hides.
package local

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
)

var _ runtime.Runtime = (*Runtime)(nil)

// Config configures the local runtime.
type Config struct {
	// Dir holds one directory per session: the agent's socket, pid file,
	// log and the session's home. Sessions never see it.
	Dir string
	// Devices are the host's GPUs that sessions may be given.
	Devices []hostgpu.Device
	// Hide lists more paths, files or directories, that sessions must not
	// see (they find them empty): the server's data directory, the CLI
	// config, the server config.
	Hide []string
	// MaxPids bounds the processes and threads of one session where the
	// pids cgroup is writable (default DefaultMaxPids).
	MaxPids int
	// AgentCommand starts an agent; the runtime appends its flags. The
	// default is this executable's `agent` subcommand.
	AgentCommand []string
	// StartTimeout bounds how long an agent may take to listen.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// DefaultMaxPids is a session's default process and thread limit.
const DefaultMaxPids = 4096

// stopTimeout bounds each wait of Stop.
const stopTimeout = 5 * time.Second

// Runtime runs sessions as sandboxed local processes.
type Runtime struct {
	cfg Config
	log *slog.Logger
	cg  *cgroups // nil where the pids cgroup is not writable
	// pool lends Config.Devices; it holds what the sessions in Dir hold.
	pool *hostgpu.Pool
	// node is this host's name, where every session runs.
	node string
	// warnings are what an admin should know about this runtime.
	warnings []string

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
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	cfg.Dir = dir
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
	if cfg.MaxPids <= 0 {
		cfg.MaxPids = DefaultMaxPids
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Runtime{cfg: cfg, log: cfg.Logger, exited: map[string]chan struct{}{},
		pool: hostgpu.NewPool(cfg.Devices), node: hostname()}
	r.holdExisting()
	total := hostPidLimit() / 2
	if cg, err := openCgroups(cfg.Dir, total); err != nil {
		w := "local sessions' processes are not limited (" + err.Error() + "): a fork bomb in a session can exhaust this host's process table; run the server as root to give each session a pids cgroup"
		r.warnings = append(r.warnings, w)
		r.log.Warn(w)
	} else {
		r.cg = cg
		if cfg.MaxPids > total {
			r.cfg.MaxPids = total
		}
		cg.sweep(context.Background(), func(id string) bool {
			_, err := os.Stat(r.dir(id))
			return err == nil
		})
	}
	return r, nil
}

// hostname is this host's name, the node of every session.
func hostname() string {
	name, err := os.Hostname()
	if err != nil || name == "" {
		return "localhost"
	}
	return name
}

// holdExisting gives the pool what the sessions under Dir hold, whether
// their agents live or not: an orphan's devices come back with its Stop.
func (r *Runtime) holdExisting() {
	entries, _ := os.ReadDir(r.cfg.Dir)
	for _, e := range entries {
		if !e.IsDir() || !runtime.ValidID(e.Name()) {
			continue
		}
		if pl, err := r.placement(e.Name()); err == nil {
			r.pool.Hold(e.Name(), pl.Devices)
		}
	}
}

// takeDevices chooses the session's devices and records them in its
// placement file. Servers sharing this runtime's directory (replicas on
// one host) start and stop sessions too, so under a lock on the directory
// the pool first re-reads what every session's placement file holds, and
// the choice is written before the lock is let go.
func (r *Runtime) takeDevices(id string, req runtime.GPURequest) ([]string, error) {
	unlock, err := lockFile(filepath.Join(r.cfg.Dir, devicesLockName))
	if err != nil {
		return nil, fmt.Errorf("local runtime: lock the devices: %w", err)
	}
	defer unlock()
	r.syncHeld()
	devices, err := r.pool.Take(id, req)
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	b, err := json.Marshal(runtime.Placement{Node: r.node, Devices: devices, Handle: r.dir(id)})
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	if err := os.WriteFile(r.placementPath(id), b, 0o600); err != nil {
		return nil, fmt.Errorf("local runtime: record placement: %w", err)
	}
	return devices, nil
}

// devicesLockName is the lock file, in the runtime's directory, that
// choosing devices holds.
const devicesLockName = ".devices.lock"

// lockFile takes an exclusive flock on path, waiting for it.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil // closing the file lets the lock go
}

// syncHeld makes the pool hold what the session directories say: a
// session's placement file, or, for a session an older release started
// without one, what the server said it holds (Hold). Sessions whose
// directory is gone (stopped, maybe by another server) hold nothing.
func (r *Runtime) syncHeld() {
	held := map[string][]string{}
	entries, _ := os.ReadDir(r.cfg.Dir)
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !runtime.ValidID(id) {
			continue
		}
		if pl, err := r.placement(id); err == nil {
			held[id] = pl.Devices
		} else if ids := r.pool.Held(id); len(ids) > 0 {
			held[id] = ids
		}
	}
	r.pool.Reset(held)
}

// placement reads where the session runs, as Start recorded it.
func (r *Runtime) placement(id string) (runtime.Placement, error) {
	var pl runtime.Placement
	b, err := os.ReadFile(r.placementPath(id))
	if err != nil {
		return pl, err
	}
	if err := json.Unmarshal(b, &pl); err != nil {
		return pl, fmt.Errorf("read placement of session %s: %w", id, err)
	}
	return pl, nil
}

// hostPidLimit is the most processes and threads this host allows.
func hostPidLimit() int {
	limit := 32768
	for i, f := range []string{"/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && (i == 0 || n < limit) {
			limit = n
		}
	}
	return limit
}

// Name implements runtime.Runtime.
func (r *Runtime) Name() string { return "local" }

// Capacity implements runtime.Runtime: the configured devices.
func (r *Runtime) Capacity(context.Context) ([]runtime.Capacity, error) {
	return r.pool.Capacity(), nil
}

// IgnoresImages implements runtime.Imageless.
func (r *Runtime) IgnoresImages() string {
	return "the local runtime runs sessions on this host's own filesystem"
}

// Warnings says what the runtime cannot enforce on this host, for the log
// and `devgpu doctor`.
func (r *Runtime) Warnings() []string { return r.warnings }

func (r *Runtime) dir(id string) string        { return filepath.Join(r.cfg.Dir, id) }
func (r *Runtime) socketPath(id string) string { return filepath.Join(r.dir(id), "agent.sock") }
func (r *Runtime) pidPath(id string) string    { return filepath.Join(r.dir(id), "agent.pid") }
func (r *Runtime) startPath(id string) string  { return filepath.Join(r.dir(id), "agent.start") }

// placementPath holds the session's runtime.Placement as JSON: its devices
// survive the control plane.
func (r *Runtime) placementPath(id string) string { return filepath.Join(r.dir(id), "placement.json") }

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
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (runtime.Placement, error) {
	devices, err := r.start(ctx, spec)
	if err != nil {
		return runtime.Placement{}, err
	}
	return runtime.Placement{Node: r.node, Devices: devices, Handle: r.dir(spec.SessionID)}, nil
}

// start starts the session and returns its devices.
func (r *Runtime) start(ctx context.Context, spec runtime.Spec) (devices []string, err error) {
	id := spec.SessionID
	if !runtime.ValidID(id) {
		return nil, fmt.Errorf("local runtime: invalid session id %q", id)
	}
	if sock := r.socketPath(id); len(sock) > 100 {
		return nil, fmt.Errorf("local runtime: socket path %s is longer than unix sockets allow; use a shorter data directory", sock)
	}
	workspace, err := workspaceDir(spec)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(r.dir(id), 0o700); err != nil {
		return nil, fmt.Errorf("local runtime: create session directory: %w", err)
	}
	// From here on, a failure stops the session, which also gives its
	// devices back.
	defer func() {
		if err != nil {
			_ = r.Stop(context.WithoutCancel(ctx), id)
		}
	}()
	if devices, err = r.takeDevices(id, spec.GPU); err != nil {
		return nil, err
	}
	home := r.HomeDir(id)
	if err := os.Mkdir(home, 0o700); err != nil {
		return nil, fmt.Errorf("local runtime: create home: %w", err)
	}
	// A symlink, not a mount: Stop's os.RemoveAll removes the link and
	// never follows it into the workspace.
	if workspace != "" {
		if err := os.Symlink(workspace, filepath.Join(home, workspaceLink)); err != nil {
			return nil, fmt.Errorf("local runtime: link workspace: %w", err)
		}
	}
	logFile, err := os.OpenFile(filepath.Join(r.dir(id), "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	defer logFile.Close()
	// The runtime makes the socket, in a directory the session never sees:
	// nothing in the session can change what Connect dials.
	lnFile, err := listen(r.socketPath(id))
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	defer lnFile.Close()

	args := append(append([]string(nil), r.cfg.AgentCommand[1:]...),
		"--session", id, "--listen-fd", "3", "--dir", home,
		"--idle-exit", spec.IdleExit.String(), "--sandbox")
	for _, p := range r.hidden() {
		args = append(args, "--sandbox-hide="+p)
	}
	args = append(args, "--sandbox-bind="+home)
	if workspace != "" {
		if spec.WorkspaceReadOnly {
			args = append(args, "--sandbox-bind-ro="+workspace)
		} else {
			args = append(args, "--sandbox-bind="+workspace)
		}
	}
	cmd := exec.Command(r.cfg.AgentCommand[0], args...)
	cmd.Dir = home
	cmd.Env = sessionEnviron(spec, devices, home, workspace)
	cmd.Stderr = logFile
	cmd.ExtraFiles = []*os.File{lnFile}
	// Root maps itself; another user maps itself to 0 in the sandbox's
	// namespace, to keep its capabilities for the mounts, and the agent
	// then runs as that user in a nested one (agent.Sandbox).
	uid, gid := os.Getuid(), os.Getgid()
	inUID, inGID := uid, gid
	if uid != 0 {
		inUID, inGID = 0, 0
		cmd.Args = append(cmd.Args, "--sandbox-uid="+strconv.Itoa(uid), "--sandbox-gid="+strconv.Itoa(gid))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: inUID, HostID: uid, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: inGID, HostID: gid, Size: 1}},
		Setpgid:     true,
	}
	// The secret travels on stdin, not in argv or the environment, and
	// only once the agent is in its cgroup.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	if r.cg != nil {
		if err := r.cg.create(id, r.cfg.MaxPids); err != nil {
			return nil, fmt.Errorf("local runtime: %w", err)
		}
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("local runtime: cannot start the session's agent in new user, mount and pid namespaces (%w); allow unprivileged user namespaces on this host (sysctl user.max_user_namespaces, and kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu) or run the server as root", err)
		}
		return nil, fmt.Errorf("local runtime: start agent: %w", err)
	}
	exited := make(chan struct{})
	r.mu.Lock()
	r.exited[id] = exited
	r.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if r.cg != nil {
		if err := r.cg.add(id, cmd.Process.Pid); err != nil {
			return nil, fmt.Errorf("local runtime: %w", err)
		}
	}
	start, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	if err := os.WriteFile(r.startPath(id), []byte(start), 0o600); err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	if err := os.WriteFile(r.pidPath(id), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		return nil, fmt.Errorf("local runtime: %w", err)
	}
	if _, err := io.WriteString(stdin, spec.AgentSecret+"\n"); err != nil {
		return nil, fmt.Errorf("local runtime: agent did not start (see %s): give it its secret: %w", logFile.Name(), err)
	}
	stdin.Close()

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
			// Stop removes the log with the session: say what it says.
			return nil, fmt.Errorf("local runtime: agent did not start (%s): %w", lastLine(logFile.Name()), err)
		}
		return devices, nil
	case <-timer.C:
		return nil, fmt.Errorf("local runtime: agent did not listen within %s (see %s)", r.cfg.StartTimeout, logFile.Name())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lastLine is the last line of the file, for an error message.
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	line := lines[len(lines)-1]
	if len(line) > 500 {
		line = line[len(line)-500:]
	}
	if line == "" {
		return "its log is empty"
	}
	return line
}

// listen makes the agent's listening socket at path, readable and
// writable by this user only, and returns it as a file for the agent.
func listen(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The agent serves it; closing the runtime's copy must not unlink it.
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, err
	}
	return ln.File()
}

// hidden lists what sessions must not see.
func (r *Runtime) hidden() []string {
	return append([]string{r.cfg.Dir, cgroupRoot}, r.cfg.Hide...)
}

// passedEnv names the variables of the server's environment a session
// gets; everything else (credentials, the server's settings) stays out.
var passedEnv = []string{"PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL"}

// defaultPath is the session's PATH when the server has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// sessionEnviron is the session's environment: passedEnv from the
// server's, HOME, the session contract for its devices and, with a workspace (the absolute
// path of spec.Workspace), where it is.
func sessionEnviron(spec runtime.Spec, devices []string, home, workspace string) []string {
	env := []string{"HOME=" + home}
	for _, name := range passedEnv {
		v, ok := os.LookupEnv(name)
		if name == "PATH" && v == "" {
			v, ok = defaultPath, true
		}
		if ok {
			env = append(env, name+"="+v)
		}
	}
	for k, v := range runtime.SessionEnv(spec, devices) {
		if workspace != "" && (k == "DEVGPU_WORKSPACE" || k == "DEVGPU_WORKSPACE_READONLY") {
			continue // the runtime's word on its workspace wins
		}
		env = append(env, k+"="+v)
	}
	if workspace != "" {
		env = append(env, "DEVGPU_WORKSPACE="+workspace)
		if spec.WorkspaceReadOnly {
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
// then kills it: the agent is the init of the session's pid namespace, so
// the kernel kills every other process of the session with it (setsid and
// a cleaned environment do not leave a pid namespace). Then it kills what
// is left in the session's cgroup, if it has one, and removes it.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if !runtime.ValidID(id) {
		return nil
	}
	if pid := r.agentPID(id); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		r.waitExit(ctx, id, pid, 3*time.Second)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		r.waitExit(ctx, id, pid, stopTimeout)
	}
	if r.cg != nil {
		if err := r.cg.remove(ctx, id); err != nil {
			return fmt.Errorf("stop session %s: %w", id, err)
		}
	}
	r.mu.Lock()
	delete(r.exited, id)
	r.mu.Unlock()
	// RemoveAll removes the home's workspace symlink without following it:
	// the persistent workspace stays.
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("stop session %s: remove its directory: %w", id, err)
	}
	// Only now that nothing of the session is left may its devices go to
	// another.
	r.pool.Release(id)
	return nil
}

// agentPID returns the live agent's pid for the session, or 0. The pid
// file and the start time beside it, which only the runtime can write
// (sessions never see the directory), make sure that a recycled pid is
// never signalled.
func (r *Runtime) agentPID(id string) int {
	b, err := os.ReadFile(r.pidPath(id))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !isAgent(pid, id) {
		return 0
	}
	start, err := os.ReadFile(r.startPath(id))
	if got, perr := procStartTime(pid); err != nil || perr != nil || got != string(start) {
		return 0
	}
	return pid
}

// waitExit waits until the agent exited (a zombie of an earlier control
// plane counts as gone), at most limit.
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
		// A session started by a version without placements ran with no
		// recorded devices: it lists at this host with none.
		pl, err := r.placement(e.Name())
		if err != nil {
			pl = runtime.Placement{Node: r.node, Handle: r.dir(e.Name())}
		}
		out = append(out, runtime.Instance{SessionID: e.Name(), StartedAt: info.ModTime(), Placement: pl})
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

// isAgent reports whether pid is a live agent of the session.
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

// procStat returns the fields of /proc/PID/stat after the parenthesised
// command name (which may hold spaces): the state first.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

func isZombie(pid int) bool {
	f, err := procStat(pid)
	return err != nil || len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// procStartTime is when pid started, in clock ticks since boot (field 22).
func procStartTime(pid int) (string, error) {
	f, err := procStat(pid)
	if err != nil {
		return "", err
	}
	if len(f) < 20 {
		return "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return f[19], nil
}

// HoldDevices holds devices for a session the runtime found without a
// record of its own (see runtime.DeviceHolder); devices another session
// holds stay with it.
func (r *Runtime) HoldDevices(sessionID string, devices []string) {
	r.pool.Hold(sessionID, devices)
}
