package oci

import (
	"errors"
	"fmt"
	"io/fs"
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
// The idmapped image is mounted in the host's mount namespace only until
// the overlay is: the overlay keeps its own reference to its layers. The
// workspace and the agent's binary are mounted into the root filesystem
// by the host before runc runs, through descriptors opened inside it
// (os.Root), so that neither runc (as the session's unprivileged root) nor
// a link in the image decides what they are; the host never resolves a
// path inside a root filesystem again once the session runs, and unmounts
// the whole tree by its root's path alone.
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

// idmapMount mounts src, idmapped through the user namespace userns (a
// file owned by k on disk belongs to the id k maps to) and with the
// MOUNT_ATTR_* flags attrs, at target: a path, or with an empty path the
// open file targetFD. Only src's own mount is cloned, not those below it.
func idmapMount(src string, userns *os.File, attrs uint64, target string, targetFD int) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount %s: open_tree: %w", src, err)
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: attrs}
	if userns != nil {
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(userns.Fd())
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("mount %s: mount_setattr: %w (idmapped mounts need a filesystem that supports them, such as ext4, xfs, btrfs or tmpfs)", src, err)
	}
	flags := unix.MOVE_MOUNT_F_EMPTY_PATH
	dirfd := unix.AT_FDCWD
	if target == "" {
		dirfd, flags = targetFD, flags|unix.MOVE_MOUNT_T_EMPTY_PATH
	}
	if err := unix.MoveMount(fd, "", dirfd, target, flags); err != nil {
		return fmt.Errorf("mount %s: move_mount: %w", src, err)
	}
	return nil
}

// lowerMount is where a session's idmapped image is mounted on the host
// until the overlay holds it.
func (r *Runtime) lowerMount(id string) string { return filepath.Join(r.dir(id), "lower") }

// idmapImage gives session id its range of host ids, mounts its image at
// lowerMount idmapped to that range and makes the writable layer's root
// the session root's. It returns the host id of the session's root.
func (r *Runtime) idmapImage(id, lower string) (uint32, error) {
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
	if err := idmapMount(lower, ns, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NODEV, r.lowerMount(id), -1); err != nil {
		return 0, err
	}
	if err := os.Lchown(r.upperDir(id), int(rootID), int(rootID)); err != nil {
		return 0, err
	}
	if err := os.Chmod(r.upperDir(id), 0o755); err != nil {
		return 0, err
	}
	return rootID, nil
}

// unmountIDMapped unmounts what idmapImage mounted (and the root
// filesystem of a session started by an earlier version, mounted in its
// state directory), and fails if anything is still mounted there.
func (r *Runtime) unmountIDMapped(id string) error {
	for _, m := range []string{r.lowerMount(id), filepath.Join(r.dir(id), "rootfs")} {
		if err := unmount(m); err != nil {
			return err
		}
		if mounted, err := isMounted(m); err != nil || mounted {
			return fmt.Errorf("%s is still mounted (%v); not removing the session's state", m, err)
		}
	}
	return nil
}

// mountAgent mounts the agent's binary, read-only, at agentInContainer in
// the session's root filesystem.
func (r *Runtime) mountAgent(id string) error {
	root, err := os.OpenRoot(r.rootfs(id))
	if err != nil {
		return err
	}
	defer root.Close()
	dir := filepath.Dir(agentInContainer)[1:]
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mount the agent: %w", err)
	}
	f, err := root.OpenFile(agentInContainer[1:], os.O_CREATE|os.O_RDONLY, 0o755)
	if err != nil {
		return fmt.Errorf("mount the agent: %w", err)
	}
	defer f.Close()
	return idmapMount(r.cfg.AgentPath, nil, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV, "", int(f.Fd()))
}

// mountWorkspace mounts the workspace dir at workspaceInContainer in the
// session's root filesystem, nosuid and nodev, read-only if asked, and
// idmapped from the workspace range to the session's (rootID and up), so
// that workspace files belong to the workspace uid on the host and look
// root's in the session. The workspace's root directory is given to the
// workspace uid first.
func (r *Runtime) mountWorkspace(id string, rootID uint32, dir string, readOnly bool) error {
	if err := r.chownWorkspace(dir); err != nil {
		return err
	}
	ns, err := userNamespace(r.cfg.IDMap.workspaceID(), rootID)
	if err != nil {
		return err
	}
	defer ns.Close()
	root, err := os.OpenRoot(r.rootfs(id))
	if err != nil {
		return err
	}
	defer root.Close()
	name := workspaceInContainer[1:]
	if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mount the workspace: %w", err)
	}
	f, err := root.Open(name)
	if err != nil {
		return fmt.Errorf("mount the workspace: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		return fmt.Errorf("mount the workspace: the image's %s is not a directory", workspaceInContainer)
	}
	attrs := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
	if readOnly {
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	return idmapMount(dir, ns, attrs, "", int(f.Fd()))
}

// DefaultMountDir is Config.MountDir's default.
const DefaultMountDir = "/run/devgpu"

// makeMountDir makes dir/tag, where the runtime whose state directory
// hashes to tag mounts root filesystems: searchable, not readable, by
// others, as is every directory above it.
func makeMountDir(dir, tag string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	md := filepath.Join(abs, tag)
	if err := os.MkdirAll(md, 0o711); err != nil {
		return "", err
	}
	for _, d := range []string{abs, md} {
		if err := os.Chmod(d, 0o711); err != nil {
			return "", err
		}
	}
	return md, traversable(md)
}

// traversable checks that every directory from / to path lets "other"
// search it.
func traversable(path string) error {
	for p := path; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is mode %#o, which a session's root (an unprivileged host uid) cannot pass to reach %s: give it o+x (chmod o+x %s) or configure a mount directory below directories others can search",
				p, fi.Mode().Perm(), path, p)
		}
		if p == "/" {
			return nil
		}
	}
}

// chownWorkspace makes the workspace root's in every session: its files
// belong to the workspace uid on the host. A workspace that is not yet
// that uid's (new, or written by sessions of a version without user
// namespaces, which wrote as host root) has its files of host uid or gid 0
// given to it first, once; its root directory last, so that an
// interrupted pass runs again. The pass resolves every path beneath the
// workspace (os.Root) and changes links, not what they point to: a link
// in the workspace never makes the host change a file outside it.
func (r *Runtime) chownWorkspace(dir string) error {
	w := int(r.cfg.IDMap.workspaceID())
	var st unix.Stat_t
	if err := unix.Fstatat(unix.AT_FDCWD, dir, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("workspace %s: %w", dir, err)
	}
	if int(st.Uid) == w && int(st.Gid) == w {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("workspace %s: %w", dir, err)
	}
	defer root.Close()
	err = fs.WalkDir(root.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		sys, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || (sys.Uid != 0 && sys.Gid != 0) {
			return nil
		}
		uid, gid := int(sys.Uid), int(sys.Gid)
		if uid == 0 {
			uid = w
		}
		if gid == 0 {
			gid = w
		}
		return root.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("workspace %s: give its files to the sessions' root: %w", dir, err)
	}
	if err := unix.Fchownat(unix.AT_FDCWD, dir, w, w, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("workspace %s: give it to the sessions' root: %w", dir, err)
	}
	return nil
}
