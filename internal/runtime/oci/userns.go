package oci

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// User namespaces.
//
// Container root is not host root: every session runs in a user namespace
// of its own that maps its ids 0..IDRangeSize-1 onto a range of host ids
// no other session and no host account uses. Root in a session is an
// unprivileged host uid: it reaches nothing of the host's that "other"
// cannot (host root's keyring, root-owned files), and sessions cannot
// touch each other's files even if one escaped its container.
//
// Debian's runc 1.1.5 cannot idmap mounts, so the runtime does it before
// runc runs (open_tree, mount_setattr with MOUNT_ATTR_IDMAP, move_mount),
// the way containerd does for image layers:
//
//   - the image, the read-only lower layer shared by sessions and owned by
//     host root, is mounted idmapped to the session's range, so that its
//     files belong to root (and its other users) inside;
//   - the writable upper layer's root belongs to the session's root;
//   - the workspace is mounted idmapped from the workspace range (the
//     installation's first range, which no session gets) to the session's:
//     a file a session's root writes there belongs to the workspace range's
//     first uid on the host whichever session wrote it, and looks owned by
//     root in every session of the same user.
//
// The idmapped mounts exist in the host's mount namespace only until runc
// has made the container's: the overlay keeps its own reference to its
// layers, and the container's /workspace is its own mount.
//
// Ranges are allocated per session as links IDs/<n> -> <session id>,
// created atomically, so that a restarted control plane (or another
// runtime on the same state directory) never hands out a range in use.

// IDRangeSize is how many uids and gids each session maps.
const IDRangeSize = 65536

// IDMap places the host ids of sessions: range n (0 < n < Ranges) is the
// host ids Base+n*IDRangeSize and up; range 0 is the workspace range.
type IDMap struct {
	Base   uint32
	Ranges uint32
}

// DefaultIDMap keeps sessions' ids far above the ids of host accounts and
// of /etc/subuid's usual ranges: 1<<30 and up, 4096 ranges (4095 sessions
// at a time).
var DefaultIDMap = IDMap{Base: 1 << 30, Ranges: 4096}

func (m IDMap) check() error {
	top := uint64(m.Base) + uint64(m.Ranges)*IDRangeSize
	if m.Ranges < 2 || m.Base == 0 || top > 1<<32-2 {
		return fmt.Errorf("id map base %d with %d ranges of %d ids is not within the host's uids above 0; the defaults are base %d and %d ranges",
			m.Base, m.Ranges, IDRangeSize, DefaultIDMap.Base, DefaultIDMap.Ranges)
	}
	return nil
}

// host is the first host id of range n.
func (m IDMap) host(n uint32) uint32 { return m.Base + n*IDRangeSize }

// workspaceID is the host uid and gid that root in a session owns
// workspace files as.
func (m IDMap) workspaceID() uint32 { return m.host(0) }

func (r *Runtime) idsDir() string { return filepath.Join(r.cfg.StateDir, "ids") }

// allocateIDs gives session id a range of its own and returns its first
// host id. A range whose session has no state left is free again.
func (r *Runtime) allocateIDs(id string) (uint32, error) {
	m := r.cfg.IDMap
	for n := uint32(1); n < m.Ranges; n++ {
		link := filepath.Join(r.idsDir(), strconv.FormatUint(uint64(n), 10))
		err := os.Symlink(id, link)
		if err == nil {
			return m.host(n), nil
		}
		if !errors.Is(err, os.ErrExist) {
			return 0, fmt.Errorf("allocate ids: %w", err)
		}
		// A session's directory exists before it takes a range: a range
		// whose session has none is a leftover.
		owner, rerr := os.Readlink(link)
		if rerr == nil && owner != id && validOwner(owner) {
			if _, serr := os.Lstat(r.dir(owner)); errors.Is(serr, os.ErrNotExist) {
				if os.Remove(link) == nil && os.Symlink(id, link) == nil {
					return m.host(n), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("allocate ids: all %d id ranges are in use; stop sessions or configure more ranges", m.Ranges-1)
}

func validOwner(s string) bool { return s != "" && filepath.Base(s) == s && s != "." && s != ".." }

// releaseIDs frees the ranges session id holds.
func (r *Runtime) releaseIDs(id string) error {
	entries, err := os.ReadDir(r.idsDir())
	if err != nil {
		return fmt.Errorf("release ids: %w", err)
	}
	for _, e := range entries {
		link := filepath.Join(r.idsDir(), e.Name())
		if owner, err := os.Readlink(link); err == nil && owner == id {
			if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("release ids: %w", err)
			}
		}
	}
	return nil
}

// idMapping maps size ids from inside onto host ids from outside.
func idMapping(inside, outside uint32) []specs.LinuxIDMapping {
	return []specs.LinuxIDMapping{{ContainerID: inside, HostID: outside, Size: IDRangeSize}}
}

// userNamespace returns a user namespace (an open /proc/PID/ns/user) with
// uids and gids inside..inside+IDRangeSize-1 mapped onto outside and up,
// for idmapping mounts. Its process, stopped before it runs anything, is
// killed before this returns: the open file keeps the namespace.
func userNamespace(inside, outside uint32) (*os.File, error) {
	m := []syscall.SysProcIDMap{{ContainerID: int(inside), HostID: int(outside), Size: IDRangeSize}}
	// Ptrace stops the child at its exec, before it runs any code; the
	// tracer is this thread.
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	p, err := os.StartProcess("/proc/self/exe", []string{"devgpu-userns"}, &os.ProcAttr{
		Sys: &syscall.SysProcAttr{
			Cloneflags:  unix.CLONE_NEWUSER,
			UidMappings: m, GidMappings: m,
			Ptrace:    true,
			Pdeathsig: syscall.SIGKILL,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	defer func() {
		_ = p.Kill()
		_, _ = p.Wait()
	}()
	f, err := os.Open("/proc/" + strconv.Itoa(p.Pid) + "/ns/user")
	if err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	return f, nil
}

// idmapMount mounts src at target (an existing directory) with its ids
// mapped through the user namespace userns: a file owned by k on disk
// belongs to the id k maps to. Only src's own mount is cloned, not those
// below it.
func idmapMount(src, target string, userns *os.File) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("idmap %s: open_tree: %w", src, err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("idmap %s: mount_setattr: %w (the filesystem must support idmapped mounts)", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("idmap %s: move_mount to %s: %w", src, target, err)
	}
	return nil
}

// chownWorkspace makes the workspace's root directory root's in every
// session (the workspace range's first id on the host), without
// following a link.
func (r *Runtime) chownWorkspace(dir string) error {
	w := int(r.cfg.IDMap.workspaceID())
	var st unix.Stat_t
	if err := unix.Fstatat(unix.AT_FDCWD, dir, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("workspace %s: %w", dir, err)
	}
	if int(st.Uid) == w && int(st.Gid) == w {
		return nil
	}
	if err := unix.Fchownat(unix.AT_FDCWD, dir, w, w, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("workspace %s: give it to the sessions' root: %w", dir, err)
	}
	return nil
}

// traversable checks that every directory from / to path lets "other"
// search it: runc, inside the session's user namespace, resolves the
// root filesystem and bind sources as the session's unprivileged root.
func traversable(path string) error {
	for p := path; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is mode %#o, which a session's root (an unprivileged host uid) cannot pass to reach %s: give it o+x (chmod o+x %s) or choose a state directory below directories others can search, such as /var/lib/devgpu",
				p, fi.Mode().Perm(), path, p)
		}
		if p == "/" {
			return nil
		}
	}
}

// installAgent links (or copies) the agent binary into the state
// directory, where a session's root can reach it and no one else can
// change it, and returns its path there.
func installAgent(src, stateDir string) (string, error) {
	dst := filepath.Join(stateDir, "agent")
	tmp := dst + ".new"
	_ = os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		if err := copyFile(src, tmp); err != nil {
			return "", fmt.Errorf("install the agent binary: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("install the agent binary: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", fmt.Errorf("install the agent binary: %w", err)
	}
	return dst, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Where a session's idmapped image and workspace are mounted on the host
// until the overlay and the container hold them.
func (r *Runtime) lowerMount(id string) string     { return filepath.Join(r.dir(id), "lower") }
func (r *Runtime) workspaceMount(id string) string { return filepath.Join(r.dir(id), "ws") }

// idmap gives session id its range of host ids and mounts its image at
// lowerMount and its workspace (if any) at workspaceMount, idmapped to
// that range; it makes the writable layer's root the session root's. It
// returns the host id of the session's root.
func (r *Runtime) idmap(id, lower, workspace string) (uint32, error) {
	rootID, err := r.allocateIDs(id)
	if err != nil {
		return 0, err
	}
	ns, err := userNamespace(0, rootID)
	if err != nil {
		return 0, err
	}
	defer ns.Close()
	if err := os.Mkdir(r.lowerMount(id), 0o700); err != nil {
		return 0, err
	}
	if err := idmapMount(lower, r.lowerMount(id), ns); err != nil {
		return 0, err
	}
	if err := os.Lchown(r.upperDir(id), int(rootID), int(rootID)); err != nil {
		return 0, err
	}
	if err := os.Chmod(r.upperDir(id), 0o755); err != nil {
		return 0, err
	}
	if workspace == "" {
		return rootID, nil
	}
	if err := r.chownWorkspace(workspace); err != nil {
		return 0, err
	}
	wsns, err := userNamespace(r.cfg.IDMap.workspaceID(), rootID)
	if err != nil {
		return 0, err
	}
	defer wsns.Close()
	if err := os.Mkdir(r.workspaceMount(id), 0o700); err != nil {
		return 0, err
	}
	if err := idmapMount(workspace, r.workspaceMount(id), wsns); err != nil {
		return 0, err
	}
	return rootID, nil
}

// unmountIDMapped unmounts what idmap mounted, and fails if anything is
// still mounted there.
func (r *Runtime) unmountIDMapped(id string) error {
	for _, m := range []string{r.lowerMount(id), r.workspaceMount(id)} {
		if err := unmount(m); err != nil {
			return err
		}
		if mounted, err := isMounted(m); err != nil || mounted {
			return fmt.Errorf("%s is still mounted (%v); not removing the session's state", m, err)
		}
	}
	return nil
}
