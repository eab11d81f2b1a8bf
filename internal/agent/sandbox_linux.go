package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sandbox is what the agent hides from, and shows to, the session it serves
// when a runtime that isolates nothing else (the local runtime) starts it
// as the first process of new user, mount and pid namespaces.
//
// EnterSandbox then, before any code of the session runs:
//   - mounts a fresh /proc for the new pid namespace, so that no process of
//     the host or of another session (their environ, fd, mem) is visible;
//   - covers every Hide path with an empty read-only tmpfs (a directory) or
//     /dev/null (a file), so that the control plane's store, the other
//     sessions' sockets and the CLI config with its token cannot be read;
//   - mounts each Bind path (and BindRO, read-only) back at its own path,
//     also where it lies under a hidden directory (the session's home and
//     workspace under the server's data directory);
//   - drops every capability, the bounding set too, and sets no_new_privs,
//     so that nothing in the session can undo the mounts (in a nested user
//     namespace the kernel locks them), and re-executes the agent without
//     the sandbox flags, so that no thread keeps a capability.
type Sandbox struct {
	Enabled bool
	Hide    []string
	Bind    []string
	BindRO  []string
	// UID and GID, for a server that is not root, are its ids, which the
	// agent takes in a nested user namespace (see runAsUser).
	UID, GID int
}

// SandboxFlagPrefix starts every command-line flag of the sandbox, so that
// EnterSandbox can re-execute the agent without them.
const SandboxFlagPrefix = "--sandbox"

// EnterSandbox sets the sandbox up (see Sandbox) and re-executes this
// program with argv minus its sandbox flags, in dir. It returns only on
// failure.
func EnterSandbox(sb Sandbox, argv []string, dir string) error {
	if os.Getpid() != 1 {
		return errors.New("agent: --sandbox needs to run as the first process of new user, mount and pid namespaces, as the local runtime starts it")
	}
	// Capabilities, the bounding set and no_new_privs belong to a thread:
	// this one drops them and then executes (or forks), so that what runs
	// next inherits this thread's.
	goruntime.LockOSThread()
	if err := sb.mount(); err != nil {
		return fmt.Errorf("agent: sandbox: %w", err)
	}
	if dir != "" {
		// The working directory inherited from the runtime is the home as
		// it was before the masks: its ".." would lead under them.
		if err := os.Chdir(dir); err != nil {
			return fmt.Errorf("agent: sandbox: %w", err)
		}
	}
	args := withoutSandboxFlags(argv)
	if sb.UID > 0 {
		return sb.runAsUser(args)
	}
	if err := dropPrivileges(); err != nil {
		return fmt.Errorf("agent: sandbox: %w", err)
	}
	err := unix.Exec("/proc/self/exe", args, os.Environ())
	return fmt.Errorf("agent: sandbox: re-execute the agent: %w", err)
}

// runAsUser runs the agent for a server that is not root. Its namespace
// maps the server's uid to 0, which keeps this process its capabilities
// across the runtime's execve, for the mounts; the agent then runs in a
// nested user namespace as the server's own uid (UID, GID), where execve
// leaves it no capability and no uid 0 exists to gain one. This process
// stays the namespace's init: it passes SIGTERM and SIGINT on to the
// agent, reaps orphans, and exits with the agent, which ends the session.
func (sb Sandbox) runAsUser(args []string) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("agent: sandbox: set no_new_privs: %w", err)
	}
	if err := ProtectSecrets(); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	cmd := exec.Command("/proc/self/exe", args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The listening socket the runtime passed as descriptor 3.
	cmd.ExtraFiles = []*os.File{os.NewFile(3, "listener")}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: sb.UID, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: sb.GID, HostID: 0, Size: 1}},
		Credential:  &syscall.Credential{Uid: uint32(sb.UID), Gid: uint32(sb.GID), NoSetGroups: true},
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("agent: sandbox: start the agent: %w", err)
	}
	os.Stdin.Close()
	os.Stdout.Close()
	agent := cmd.Process.Pid
	go func() {
		for sig := range sigs {
			_ = syscall.Kill(agent, sig.(syscall.Signal))
		}
	}()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("agent: sandbox: wait for the agent: %w", err)
		}
		if pid == agent {
			code := ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			os.Exit(code)
		}
	}
}

// withoutSandboxFlags returns argv without the flags that start with
// SandboxFlagPrefix (and their values, when given apart).
func withoutSandboxFlags(argv []string) []string {
	var out []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if !strings.HasPrefix(a, SandboxFlagPrefix) {
			out = append(out, a)
			continue
		}
		if a != SandboxFlagPrefix && !strings.Contains(a, "=") && i+1 < len(argv) {
			i++ // --sandbox-hide PATH
		}
	}
	return out
}

func (sb Sandbox) mount() error {
	// Nothing done here may reach the host's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	type bind struct {
		path string
		fd   int
		ro   bool
		dir  bool
	}
	// Open what is bound back before hiding anything: the masks may cover it.
	var binds []bind
	defer func() {
		for _, b := range binds {
			unix.Close(b.fd)
		}
	}()
	for i, p := range slices.Concat(sb.Bind, sb.BindRO) {
		p = filepath.Clean(p)
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", p, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fmt.Errorf("stat %s: %w", p, err)
		}
		binds = append(binds, bind{path: p, fd: fd, ro: i >= len(sb.Bind), dir: st.Mode&unix.S_IFMT == unix.S_IFDIR})
	}

	// Outer paths first; a path under one already hidden is hidden with it.
	hide := make([]string, 0, len(sb.Hide))
	for _, p := range sb.Hide {
		hide = append(hide, filepath.Clean(p))
	}
	slices.SortFunc(hide, func(a, b string) int { return len(a) - len(b) })
	var dirs, files []string
	for _, p := range hide {
		if slices.ContainsFunc(dirs, func(d string) bool { return under(p, d) }) {
			continue
		}
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("hide %s: %w", p, err)
		}
		if fi.IsDir() {
			if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=1m,nr_inodes=1k"); err != nil {
				return fmt.Errorf("hide %s: %w", p, err)
			}
			dirs = append(dirs, p)
		} else {
			files = append(files, p)
		}
	}
	for _, p := range files {
		if slices.ContainsFunc(dirs, func(d string) bool { return under(p, d) }) {
			continue
		}
		if err := unix.Mount("/dev/null", p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("hide %s: %w", p, err)
		}
		if err := remountReadOnly(p); err != nil {
			return fmt.Errorf("hide %s: %w", p, err)
		}
	}

	for _, b := range binds {
		if slices.ContainsFunc(dirs, func(d string) bool { return under(b.path, d) }) {
			// Make the mount point in the empty tmpfs.
			if b.dir {
				if err := os.MkdirAll(b.path, 0o755); err != nil {
					return fmt.Errorf("bind %s: %w", b.path, err)
				}
			} else {
				if err := os.MkdirAll(filepath.Dir(b.path), 0o755); err != nil {
					return fmt.Errorf("bind %s: %w", b.path, err)
				}
				if err := os.WriteFile(b.path, nil, 0o600); err != nil {
					return fmt.Errorf("bind %s: %w", b.path, err)
				}
			}
		}
		src := "/proc/self/fd/" + strconv.Itoa(b.fd)
		if err := unix.Mount(src, b.path, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", b.path, err)
		}
		if b.ro {
			if err := remountReadOnly(b.path); err != nil {
				return fmt.Errorf("bind %s read-only: %w", b.path, err)
			}
		}
	}
	for _, d := range dirs {
		if err := unix.Mount("", d, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("hide %s read-only: %w", d, err)
		}
	}
	// Last, so that the binds above could still name /proc/self/fd.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	return nil
}

// under reports whether path is dir or lies below it.
func under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// remountReadOnly makes the bind mount at path read-only, keeping the
// flags the kernel locks on mounts copied into a user namespace (a remount
// that would clear one of them fails).
func remountReadOnly(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	keep := uintptr(0)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			keep |= f.ms
		}
	}
	return unix.Mount("", path, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|keep, "")
}

// dropPrivileges leaves the calling thread no capability, now or after an
// execve (an empty bounding set: uid 0 of the namespace gains none), and
// sets no_new_privs, so that no set-user-ID program gives any back.
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("drop capabilities: %w", err)
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read the last capability: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read the last capability: %w", err)
	}
	return n, nil
}

// ProtectSecrets marks this process non-dumpable: processes of the same
// user (the session's own, in the local runtime) can then neither ptrace
// it nor read its memory, environment or file descriptors through /proc,
// where the session secret lives. Children get the default back at exec.
func ProtectSecrets() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("agent: mark non-dumpable: %w", err)
	}
	return nil
}
