// Package oci is the isolating runtime: each session is a runc container
// with its own pid, mount, uts, ipc and network namespaces, a writable
// overlay over a read-only image, cgroup limits per GPU type, and exactly its
// GPUs injected through CDI. The session agent is bind-mounted read-only and
// is the container's init.
//
// The host never follows a path a session can write. The control plane
// creates the agent's listening unix socket itself, in a host directory
// (sock/, 0700) that is mounted into no container, and hands the listening
// descriptor to the agent (runc run --preserve-fds, the agent's
// --listen-fd): the session cannot replace or redirect what the host dials.
// The rest of a session's host state (config.json, agent.log, the overlay's
// mount point) lies in s/<id>/, which no container mounts either; the
// session writes only its overlay's upper layer, which the host removes
// without following links once the overlay is unmounted.
//
// Capabilities, masked and read-only paths follow `runc spec`. Every session
// runs under a seccomp filter: Docker's default profile, generated from
// github.com/moby/profiles/seccomp for the session's capabilities, unless
// the admin names another profile or "unconfined" (Config.Seccomp).
//
// A session's persistent workspace (runtime.Spec.Workspace), a host
// directory, is bind-mounted at /workspace (read-only with
// WorkspaceReadOnly), which DEVGPU_WORKSPACE names. Sessions run in user
// namespaces (see userns.go): root in a session is an unprivileged host
// uid of a range of its own, and the workspace is mounted idmapped, so
// that what a session's root writes there is owned on the host by the
// installation's workspace uid and looks root's in every session. The
// runtime gives the workspace's root directory to that uid.
//
// The runtime lends the host's GPUs (Config.Devices) from a
// hostgpu.Pool: Start takes the devices a session asks for, injects
// exactly those through CDI and records the session's placement in
// s/<id>/placement.json, where a runtime constructed again over the same
// state (a restarted control plane) finds it, so that a held device is
// never lent twice; Stop gives them back once the session is gone.
//
// The runtime drives runc (Debian's runc 1.1.5 works on hybrid cgroup v1
// hosts). crun is not an alternative there: crun 1.8.1 refuses to start
// containers with "cgroups in hybrid mode not supported, drop all controllers
// from cgroupv2".
//
// Layout under Config.StateDir:
//
//	runc/             runc's state (--root)
//	cdi/              generated CDI specs (simulated GPUs)
//	ids/<n>           a link to the session that holds host id range n
//	sock/<id>.sock    the agent's socket of each session (0700 directory)
//	s/<id>/           one session: placement.json, config.json (the bundle), upper/ and
//	                  work/ (its writable layer) and agent.log; with disk
//	                  limits these three lie in layer/, the mount point of
//	                  the session's own filesystem
//	disk.img, disk/   the disk pool with the sessions' writable layers and
//	                  the workspaces' filesystems (see disk.go)
//
// and under Config.MountDir (/run/devgpu), <tag>/<id>: each session's root
// filesystem, the overlay, with the agent and the workspace mounted in it.
package oci

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/sdk"
)

var _ runtime.Runtime = (*Runtime)(nil)

// Images gives the runtime an unpacked image. The directory it returns is
// used read-only as the lower layer of every session's overlay, so that a
// start never copies the image; it must stay in place while sessions use it.
// progress, when not nil, hears the bytes of a pull done of total.
type Images interface {
	Rootfs(ctx context.Context, image string, progress func(done, total int64)) (lowerDir string, err error)
}

// Network puts a session into a network namespace that enforces an egress
// policy. Teardown is keyed by the session id rather than returned by Setup,
// so that a restarted control plane can clean up what an earlier one set up;
// it must succeed for a session it does not know.
type Network interface {
	Setup(ctx context.Context, sessionID string, policy sdk.Egress) (netnsPath string, err error)
	Teardown(ctx context.Context, sessionID string) error
}

// Config configures the oci runtime.
type Config struct {
	// StateDir holds runc's state, the bundles, overlays and sockets. Its
	// path should be short: unix socket paths are limited to about 100
	// bytes.
	StateDir string
	// Runc is the runc executable ("runc" on $PATH by default).
	Runc string
	// AgentPath is a statically linked devgpu binary (CGO_ENABLED=0), bind
	// mounted read-only into every session, whose image may lack a libc.
	AgentPath string
	// Images resolves Image to an unpacked root filesystem.
	Images Images
	// Image is the image of sessions whose Spec names none.
	Image string
	// Devices are the host's GPUs that sessions may be given.
	Devices []hostgpu.Device
	// Limits per GPU type; a type that is not listed gets the "" entry.
	// Nil means DefaultLimits. Every limit is capped to the sessions' share
	// of the host, which leaves the host and the control plane a reserve;
	// all sessions together are bounded by that share too.
	Limits map[string]Limits
	// Network sets up each session's network namespace. Nil gives every
	// session a fresh namespace with only loopback (egress "none").
	Network Network
	// Egress is the policy of sessions whose Spec has none.
	Egress sdk.Egress
	// CDIDirs are where CDI specs are looked up, lowest priority first;
	// default /etc/cdi and /var/run/cdi, where `nvidia-ctk cdi generate`
	// writes. StateDir/cdi, holding the spec of simulated GPUs, always comes
	// last.
	CDIDirs []string
	// Seccomp is the seccomp profile of every session: "" for Docker's
	// default profile, the path of a profile in Docker's JSON format, or
	// SeccompUnconfined for none.
	Seccomp string
	// Disk bounds each session's writable layer and workspace with a
	// filesystem of its own in a pool of fixed size (see disk.go). Nil
	// leaves both unbounded on StateDir's filesystem, where a session can
	// fill the host's disk: for tests of other things only.
	Disk *DiskConfig
	// IDMap places the host uid and gid ranges of sessions' user
	// namespaces; zero means DefaultIDMap.
	IDMap IDMap
	// MountDir holds the mount points of sessions' root filesystems
	// (default /run/devgpu). Every directory on its path must be
	// searchable by others: runc resolves a root filesystem as the
	// session's root, an unprivileged host uid, while StateDir need not
	// be (root's home, say).
	MountDir string
	// StartTimeout bounds how long a container's agent may take to listen.
	StartTimeout time.Duration
	Logger       *slog.Logger
}

// Runtime runs sessions as runc containers.
type Runtime struct {
	cfg    Config
	log    *slog.Logger
	limits map[string]Limits
	cdi    *devices
	// seccomp is the filter of every session.
	seccomp seccompProfile
	// mountDir holds the mount points of sessions' root filesystems.
	mountDir string
	// tag keeps cgroup paths of runtimes over different state directories
	// apart.
	tag string
	// disk holds the sessions' writable layers and workspaces; nil without
	// Config.Disk.
	disk *disks
	// pool lends Config.Devices; it holds what the sessions in s/ hold.
	pool *hostgpu.Pool
	// node is this host's name, where every session runs.
	node string
}

// New returns an oci runtime keeping its state under cfg.StateDir.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("oci runtime: no state directory configured")
	}
	if cfg.AgentPath == "" {
		return nil, errors.New("oci runtime: no agent binary configured")
	}
	if cfg.Images == nil {
		return nil, errors.New("oci runtime: no image store configured")
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	cfg.StateDir = abs
	if cfg.AgentPath, err = filepath.Abs(cfg.AgentPath); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if _, err := os.Stat(cfg.AgentPath); err != nil {
		return nil, fmt.Errorf("oci runtime: agent binary: %w", err)
	}
	if cfg.Runc == "" {
		cfg.Runc = "runc"
	}
	if cfg.Runc, err = exec.LookPath(cfg.Runc); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Egress.Mode == "" {
		cfg.Egress.Mode = sdk.EgressNone
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "runc"), filepath.Join(cfg.StateDir, "s"), filepath.Join(cfg.StateDir, "sock"), filepath.Join(cfg.StateDir, "ids")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("oci runtime: %w", err)
		}
	}
	if cfg.IDMap == (IDMap{}) {
		cfg.IDMap = DefaultIDMap
	}
	if err := cfg.IDMap.check(); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	sum := sha256.Sum256([]byte(cfg.StateDir))
	tag := hex.EncodeToString(sum[:4])
	mountDir, err := makeMountDir(cmp.Or(cfg.MountDir, DefaultMountDir), tag)
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	devs, err := newDevices(cfg.CDIDirs, filepath.Join(cfg.StateDir, "cdi"))
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	share, err := sessionsShare()
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if err := setParentLimits(share); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	limits := capped(cfg.Limits, share)
	sc, err := loadSeccomp(cfg.Seccomp)
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if sc.unconfined {
		cfg.Logger.Warn("oci runtime: sessions run WITHOUT a seccomp profile (seccomp: unconfined): every system call the kernel offers, such as keyctl, bpf and io_uring, is open to them")
	}
	var disk *disks
	if cfg.Disk != nil {
		if disk, err = openDisks(cfg.StateDir, *cfg.Disk, cfg.Logger); err != nil {
			return nil, fmt.Errorf("oci runtime: %w", err)
		}
	}
	r := &Runtime{
		cfg: cfg, log: cfg.Logger, limits: limits, cdi: devs, seccomp: sc,
		tag: tag, disk: disk, mountDir: mountDir,
		pool: hostgpu.NewPool(cfg.Devices), node: hostname(),
	}
	r.holdExisting()
	return r, nil
}

// Name implements runtime.Runtime.
func (r *Runtime) Name() string { return "oci" }

// Capacity implements runtime.Runtime: the configured devices.
func (r *Runtime) Capacity(context.Context) ([]runtime.Capacity, error) {
	return r.pool.Capacity(), nil
}

// hostname is this host's name, the node of every session.
func hostname() string {
	name, err := os.Hostname()
	if err != nil || name == "" {
		return "localhost"
	}
	return name
}

// placementPath holds the session's runtime.Placement as JSON, in its
// host-only state directory: its devices survive the control plane.
func (r *Runtime) placementPath(id string) string { return filepath.Join(r.dir(id), "placement.json") }

// holdExisting gives the pool what the sessions with state hold, running
// or not: an orphan's devices come back with its Stop.
func (r *Runtime) holdExisting() {
	entries, _ := os.ReadDir(filepath.Join(r.cfg.StateDir, "s"))
	for _, e := range entries {
		if !e.IsDir() || !runtime.ValidID(e.Name()) {
			continue
		}
		if pl, err := r.placement(e.Name()); err == nil {
			r.pool.Hold(e.Name(), pl.Devices)
		}
	}
}

// placement reads where the session runs, as Start recorded it; a session
// of a version without placements runs here with no recorded devices.
func (r *Runtime) placement(id string) (runtime.Placement, error) {
	pl := runtime.Placement{Node: r.node, Handle: id}
	b, err := os.ReadFile(r.placementPath(id))
	if err != nil {
		return pl, err
	}
	if err := json.Unmarshal(b, &pl); err != nil {
		return pl, fmt.Errorf("read placement of session %s: %w", id, err)
	}
	return pl, nil
}

func (r *Runtime) runcRoot() string        { return filepath.Join(r.cfg.StateDir, "runc") }
func (r *Runtime) dir(id string) string    { return filepath.Join(r.cfg.StateDir, "s", id) }
func (r *Runtime) rootfs(id string) string { return filepath.Join(r.mountDir, id) }
func (r *Runtime) socketPath(id string) string {
	return filepath.Join(r.cfg.StateDir, "sock", id+".sock")
}

// logPath is the agent's log, on the session's writable layer's
// filesystem with disk limits: what a session makes its agent write
// counts against its layer, not the host's disk.
func (r *Runtime) logPath(id string) string { return filepath.Join(r.layerDir(id), "agent.log") }

// Paths inside the container.
const (
	agentInContainer = "/.devgpu/agent"
	homeInContainer  = "/root"
	// listenFD is the agent's listening socket in the container: runc's
	// --preserve-fds passes the host's descriptors from 3 on.
	listenFD = 3
	// workspaceInContainer is where the session's persistent workspace
	// is mounted.
	workspaceInContainer = "/workspace"
)

// Start implements runtime.Runtime. The session's handle is its runc
// container id.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (runtime.Placement, error) {
	devices, err := r.start(ctx, spec)
	if err != nil {
		return runtime.Placement{}, err
	}
	return runtime.Placement{Node: r.node, Devices: devices, Handle: spec.SessionID}, nil
}

// start starts the session and returns its devices.
func (r *Runtime) start(ctx context.Context, spec runtime.Spec) (devices []string, err error) {
	id := spec.SessionID
	if !runtime.ValidID(id) {
		return nil, fmt.Errorf("oci runtime: invalid session id %q", id)
	}
	if sock := r.socketPath(id); len(sock) > 100 {
		return nil, fmt.Errorf("oci runtime: socket path %s is longer than unix sockets allow; use a shorter state directory", sock)
	}
	if spec.Workspace != "" {
		if spec.Workspace, err = workspaceDir(spec.Workspace); err != nil {
			return nil, err
		}
	}
	img := cmp.Or(spec.Image, r.cfg.Image)
	var pull func(done, total int64)
	if spec.Progress != nil {
		pull = func(done, total int64) { spec.Progress("pulling "+img, done, total) }
	}
	lower, err := r.cfg.Images.Rootfs(ctx, img, pull)
	if err != nil {
		return nil, fmt.Errorf("oci runtime: image %s: %w", img, err)
	}
	if err := os.Mkdir(r.dir(id), 0o700); err != nil {
		return nil, fmt.Errorf("oci runtime: create session directory: %w", err)
	}
	defer func() {
		if err != nil {
			if serr := r.Stop(context.WithoutCancel(ctx), id); serr != nil {
				r.log.Warn("clean up after failed start", "session_id", id, "err", serr)
			}
		}
	}()
	if devices, err = r.pool.Take(id, spec.GPU); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	b, err := json.Marshal(runtime.Placement{Node: r.node, Devices: devices, Handle: id})
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if err := os.WriteFile(r.placementPath(id), b, 0o600); err != nil {
		return nil, fmt.Errorf("oci runtime: record placement: %w", err)
	}
	if err := os.Mkdir(r.rootfs(id), 0o700); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if err := r.prepareLayer(id, spec.GPU.Type, spec.Workspace, spec.WorkspaceLimitBytes); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	rootID, err := r.idmapImage(id, lower)
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	err = mountOverlay(r.lowerMount(id), r.upperDir(id), r.workDir(id), r.rootfs(id))
	// The overlay holds its own reference to its layers.
	if uerr := unmount(r.lowerMount(id)); err == nil && uerr != nil {
		err = uerr
	}
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if err := prepareRootfs(r.rootfs(id), id, int(rootID)); err != nil {
		return nil, fmt.Errorf("oci runtime: prepare rootfs: %w", err)
	}
	if err := r.mountAgent(id); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if spec.Workspace != "" {
		if err := r.mountWorkspace(id, rootID, spec.Workspace, spec.WorkspaceReadOnly); err != nil {
			return nil, fmt.Errorf("oci runtime: %w", err)
		}
	}

	netns := ""
	if r.cfg.Network != nil {
		egress := spec.Egress
		if egress.Mode == "" {
			egress = r.cfg.Egress
		}
		if netns, err = r.cfg.Network.Setup(ctx, id, egress); err != nil {
			return nil, fmt.Errorf("oci runtime: network: %w", err)
		}
		if err := r.mountSysfs(id, netns); err != nil {
			return nil, fmt.Errorf("oci runtime: %w", err)
		}
	}
	ociSpec, err := r.buildSpec(spec, devices, netns, rootID)
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	b, err = json.MarshalIndent(ociSpec, "", "\t")
	if err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if err := os.WriteFile(filepath.Join(r.dir(id), "config.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("oci runtime: %w", err)
	}
	if err := r.run(ctx, id, spec.AgentSecret); err != nil {
		return nil, err
	}
	return devices, nil
}

// workspaceDir returns the absolute path of a session's workspace after
// checking that it is an existing directory: runc would otherwise create a
// missing bind source, and the runtime creates nothing outside it.
func workspaceDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("oci runtime: workspace: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("oci runtime: workspace %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("oci runtime: workspace %s is not a directory", abs)
	}
	return abs, nil
}

// run starts the container and waits for its agent's "ready" line. With
// --detach and no terminal, runc hands its own stdio to the container's
// process: the secret goes in through a pipe on stdin, the ready line comes
// back through one on stdout, and the agent's log (and runc's errors) go to
// agent.log. The agent's listening socket, made here, is its descriptor 3.
func (r *Runtime) run(ctx context.Context, id, secret string) error {
	logFile, err := os.OpenFile(r.logPath(id), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("oci runtime: %w", err)
	}
	defer logFile.Close()
	lnFile, err := r.listen(id)
	if err != nil {
		return fmt.Errorf("oci runtime: %w", err)
	}
	defer lnFile.Close()
	inR, inW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("oci runtime: %w", err)
	}
	defer inW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		return fmt.Errorf("oci runtime: %w", err)
	}
	defer outR.Close()

	cmd := exec.Command(r.cfg.Runc, "--root", r.runcRoot(), "run", "--detach", "--preserve-fds", "1", "--bundle", r.dir(id), id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, logFile
	cmd.ExtraFiles = []*os.File{lnFile} // listenFD
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		return fmt.Errorf("oci runtime: start runc: %w", err)
	}
	// The secret fits in the pipe's buffer, so this never blocks on a
	// container that does not read.
	_, werr := io.WriteString(inW, secret+"\n")
	inW.Close()

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(outR).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected agent output %q", line)
		}
		ready <- err
	}()
	// runc run --detach returns once the container's process runs.
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("oci runtime: runc run: %w: %s", err, r.logTail(id))
	}
	if werr != nil {
		return fmt.Errorf("oci runtime: pass the secret: %w", werr)
	}
	timer := time.NewTimer(r.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("oci runtime: agent did not start: %w: %s", err, r.logTail(id))
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("oci runtime: agent did not listen within %s (see %s)", r.cfg.StartTimeout, r.logPath(id))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// listen creates the session's agent socket in the host-only socket
// directory and returns its listening descriptor for the container. The
// host keeps no listener: the socket file stays for Connect to dial, and
// dies with the container.
func (r *Runtime) listen(id string) (*os.File, error) {
	path := r.socketPath(id)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale agent socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	return f, nil
}

// logTail is the end of the session's log, for error messages.
func (r *Runtime) logTail(id string) string {
	b, _ := os.ReadFile(r.logPath(id))
	b = bytes.TrimSpace(b)
	if len(b) > 1000 {
		b = b[len(b)-1000:]
	}
	return string(b)
}

// Connect implements runtime.Runtime.
func (r *Runtime) Connect(ctx context.Context, id string) (net.Conn, error) {
	if !runtime.ValidID(id) {
		return nil, runtime.ErrNotFound
	}
	path := r.socketPath(id)
	// The directory is the host's alone; still, dial only the socket the
	// host made, never a link.
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("connect to session %s: %s is not the socket the runtime made", id, path)
	}
	return runtime.DialSocket(ctx, id, path)
}

// Stop implements runtime.Runtime: it kills the container (its pid
// namespace dies with its init, taking every process in it), deletes it,
// tears down its network, unmounts its overlay and removes its state. The
// workspace was mounted only in the container's mount namespace, which
// died with it: removing the state never reaches the workspace.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	if !runtime.ValidID(id) {
		return nil
	}
	if err := r.runc(ctx, "delete", "--force", id); err != nil && !isNotExist(err) {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	if r.cfg.Network != nil {
		if err := r.cfg.Network.Teardown(ctx, id); err != nil {
			return fmt.Errorf("stop session %s: network: %w", id, err)
		}
	}
	if err := unmount(r.rootfs(id)); err != nil {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	// The root filesystem's mount point is empty now, or this fails.
	if err := os.Remove(r.rootfs(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	// A start that failed half-way may have left its idmapped image
	// mounted; removing the state must never reach into it.
	if err := r.unmountIDMapped(id); err != nil {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	if err := r.releaseLayer(id); err != nil {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	// Only now that nothing is mounted below it is removing safe.
	// RemoveAll unlinks the links a session made in its upper layer rather
	// than following them.
	if err := os.RemoveAll(r.dir(id)); err != nil {
		return fmt.Errorf("stop session %s: remove its state: %w", id, err)
	}
	if err := os.Remove(r.socketPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop session %s: remove its socket: %w", id, err)
	}
	if err := r.releaseIDs(id); err != nil {
		return fmt.Errorf("stop session %s: %w", id, err)
	}
	// Only now that nothing of the session is left may its devices go to
	// another.
	r.pool.Release(id)
	return nil
}

// container is runc's view of one container (`runc list --format json`).
type container struct {
	ID      string    `json:"id"`
	Pid     int       `json:"pid"`
	Status  string    `json:"status"`
	Bundle  string    `json:"bundle"`
	Created time.Time `json:"created"`
}

func (r *Runtime) containers(ctx context.Context) ([]container, error) {
	out, err := r.runcOutput(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var cs []container
	if len(bytes.TrimSpace(out)) == 0 {
		return nil, nil
	}
	if err := json.Unmarshal(out, &cs); err != nil {
		return nil, fmt.Errorf("parse runc list: %w", err)
	}
	return cs, nil
}

// List implements runtime.Runtime: every container that runs. Containers
// whose agent has exited are not listed; Orphans names them for Stop.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	cs, err := r.containers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	var out []runtime.Instance
	for _, c := range cs {
		if c.Status == "running" && runtime.ValidID(c.ID) {
			pl, _ := r.placement(c.ID)
			out = append(out, runtime.Instance{SessionID: c.ID, StartedAt: c.Created, Placement: pl})
		}
	}
	return out, nil
}

// Orphans returns sessions with state but no running container (their
// agent exited, or a control plane died while starting them), so that the
// control plane can Stop (clean) them.
func (r *Runtime) Orphans(ctx context.Context) ([]string, error) {
	running, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, in := range running {
		live[in.SessionID] = true
	}
	entries, err := os.ReadDir(filepath.Join(r.cfg.StateDir, "s"))
	if err != nil {
		return nil, fmt.Errorf("list session state: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && runtime.ValidID(e.Name()) && !live[e.Name()] {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// runcError is a failed runc command with what it said.
type runcError struct {
	args   []string
	err    error
	stderr string
}

func (e *runcError) Error() string {
	return fmt.Sprintf("runc %s: %v: %s", strings.Join(e.args, " "), e.err, e.stderr)
}

func (e *runcError) Unwrap() error { return e.err }

// isNotExist reports whether runc failed because the container does not
// exist. runc says so only in words.
func isNotExist(err error) bool {
	var re *runcError
	return errors.As(err, &re) && strings.Contains(re.stderr, "does not exist")
}

func (r *Runtime) runc(ctx context.Context, args ...string) error {
	_, err := r.runcOutput(ctx, args...)
	return err
}

func (r *Runtime) runcOutput(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.cfg.Runc, append([]string{"--root", r.runcRoot()}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, &runcError{args: args, err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return out, nil
}

// HoldDevices holds devices for a session the runtime found without a
// record of its own (see runtime.DeviceHolder); devices another session
// holds stay with it.
func (r *Runtime) HoldDevices(sessionID string, devices []string) {
	r.pool.Hold(sessionID, devices)
}
