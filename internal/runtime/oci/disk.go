package oci

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Disk limits.
//
// This kernel kind has no project quotas (XFS is built without quota
// support, ext4 without the quota format, tmpfs without quotas), so the
// runtime bounds disk use with filesystems instead: every session's
// writable layer and every workspace is its own ext4 filesystem in a
// sparse image file of its limit's size, mounted through a loop device.
// A write past the limit fails inside the session with ENOSPC; usage is
// the filesystem's (statfs), read at once however many files it holds;
// and the limit holds for as long as the filesystem is mounted, not only
// at start.
//
// Sparse images alone could still, together, outgrow the host's disk. So
// they all live in one pool: an ext4 filesystem in an image whose blocks
// are allocated on the host's disk when it is created (fallocate), mounted
// at StateDir/disk. Whatever sessions write, the host's disk loses no more
// than the pool's size; when the pool is full (limits can add up to more
// than it), writes fail with ENOSPC in sessions, never on the host.
// Images are mounted with discard, so that deleting files gives their
// blocks back to the pool.
//
// Layout of the pool:
//
//	layers/<id>.img   a session's writable layer, mounted at s/<id>/layer
//	                  (upper/, work/ and agent.log); removed by Stop
//	layers/<id>.ws    the workspace directory the session uses, if any
//	workspaces/<h>.img the workspace whose host directory hashes to h,
//	                  mounted on that directory, so that the host sees
//	                  its files there as before
//	workspaces/<h>.dir that directory, to mount it again after a reboot
//
// A filesystem is never mounted through two loop devices at once, which
// would corrupt it: an image that a loop device still holds (mounted
// somewhere) is mounted again through that device, and the runtime never
// detaches a workspace or the pool lazily.

// DefaultLayerLimit is the size of a session's writable layer where
// DiskConfig.LayerLimits has no entry for its GPU type.
const DefaultLayerLimit = 20 << 30

// minPool is the smallest pool the runtime creates.
const minPool = 256 << 20

// DiskConfig bounds what sessions can write.
type DiskConfig struct {
	// PoolSize is the size of the pool every writable layer and workspace
	// lives in, allocated on the host's disk at the first start. Zero
	// means half the space free on StateDir's filesystem at that moment.
	// An existing pool keeps its size.
	PoolSize int64
	// LayerLimits bounds a session's writable layer (what it writes
	// outside its workspace) per GPU type; a type not listed gets the ""
	// entry, or DefaultLayerLimit.
	LayerLimits map[string]int64
}

// disks is the pool and the filesystems in it.
type disks struct {
	root   string // the pool's mount point
	limits map[string]int64
	// e2fsprogs
	mkfs, e2fsck, resize2fs string
	log                     *slog.Logger
	// mu orders the mounts of workspaces, which sessions share, and the
	// records of who uses them.
	mu sync.Mutex
}

// openDisks mounts the pool under stateDir, creating it at first.
func openDisks(stateDir string, cfg DiskConfig, log *slog.Logger) (*disks, error) {
	// The kernel names mount points and loop devices' files by their
	// paths without links: so does the runtime, to recognise its own.
	stateDir, err := filepath.EvalSymlinks(stateDir)
	if err != nil {
		return nil, err
	}
	d := &disks{root: filepath.Join(stateDir, "disk"), limits: cfg.LayerLimits, log: log}
	for _, tool := range []struct {
		name string
		path *string
	}{{"mkfs.ext4", &d.mkfs}, {"e2fsck", &d.e2fsck}, {"resize2fs", &d.resize2fs}} {
		path, err := exec.LookPath(tool.name)
		if err != nil {
			return nil, fmt.Errorf("disk limits need %s, which is not on $PATH; install e2fsprogs (apt-get install e2fsprogs)", tool.name)
		}
		*tool.path = path
	}
	img := filepath.Join(stateDir, "disk.img")
	if err := os.MkdirAll(d.root, 0o700); err != nil {
		return nil, err
	}
	mounted, err := d.mountedImage(d.root)
	if err != nil {
		return nil, err
	}
	switch {
	case mounted == img:
	case mounted != "":
		return nil, fmt.Errorf("%s holds another filesystem (%s) than the runtime's disk pool %s; unmount it", d.root, mounted, img)
	default:
		if _, err := os.Stat(img); errors.Is(err, os.ErrNotExist) {
			size := cfg.PoolSize
			if size == 0 {
				var st unix.Statfs_t
				if err := unix.Statfs(stateDir, &st); err != nil {
					return nil, fmt.Errorf("disk pool: %w", err)
				}
				size = int64(st.Bavail) * st.Bsize / 2
			}
			size &^= 1<<20 - 1
			if size < minPool {
				return nil, fmt.Errorf("the disk pool for sessions would be %d MiB, less than the %d MiB it needs; free space on %s or set its size", size>>20, minPool>>20, stateDir)
			}
			log.Info("creating the disk pool for sessions' writable layers and workspaces", "path", img, "bytes", size)
			if err := d.makeImage(img, size, true); err != nil {
				return nil, fmt.Errorf("disk pool: %w", err)
			}
		}
		// No discard: the pool keeps its blocks on the host's disk.
		if err := mountImage(img, d.root, unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, "noinit_itable"); err != nil {
			return nil, fmt.Errorf("disk pool: %w", err)
		}
	}
	for _, dir := range []string{"layers", "workspaces"} {
		if err := os.MkdirAll(filepath.Join(d.root, dir), 0o700); err != nil {
			return nil, fmt.Errorf("disk pool: %w", err)
		}
	}
	d.remountWorkspaces()
	return d, nil
}

// remountWorkspaces mounts every workspace on its directory again after a
// reboot, so that the host sees their files where it did; a start mounts
// any it could not.
func (d *disks) remountWorkspaces() {
	d.mu.Lock()
	defer d.mu.Unlock()
	recs, _ := filepath.Glob(filepath.Join(d.root, "workspaces", "*.dir"))
	for _, rec := range recs {
		b, err := os.ReadFile(rec)
		if err != nil {
			continue
		}
		dir, img := string(b), strings.TrimSuffix(rec, ".dir")+".img"
		if img != d.workspaceImage(dir) {
			continue
		}
		if mounted, err := d.mountedImage(dir); err != nil || mounted != "" {
			continue
		}
		if _, err := os.Stat(img); err != nil {
			continue
		}
		if err := mountWorkspaceImage(img, dir); err != nil {
			d.log.Warn("mount a workspace again", "dir", dir, "err", err)
		}
	}
}

// makeImage creates an image file of size bytes holding an empty ext4
// filesystem; thick allocates its blocks.
func (d *disks) makeImage(path string, size int64, thick bool) error {
	tmp := path + ".new"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if thick {
		err = unix.Fallocate(int(f.Fd()), 0, 0, size)
		if errors.Is(err, unix.ENOSPC) {
			err = fmt.Errorf("%s has no room for %d MiB; free space or choose a smaller size", filepath.Dir(path), size>>20)
		}
	} else {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	// Lazy initialisation makes even a large filesystem in a few
	// milliseconds; nodiscard keeps a thick image thick.
	out, err := exec.Command(d.mkfs, "-q", "-F", "-b", "4096", "-m", "0", "-i", "8192",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, bytes.TrimSpace(out))
	}
	return os.Rename(tmp, path)
}

// layerLimit is the writable layer's size for a GPU type.
func (d *disks) layerLimit(gpuType string) int64 {
	if n, ok := d.limits[gpuType]; ok && n > 0 {
		return n
	}
	if n, ok := d.limits[""]; ok && n > 0 {
		return n
	}
	return DefaultLayerLimit
}

func (d *disks) layerImage(id string) string  { return filepath.Join(d.root, "layers", id+".img") }
func (d *disks) layerRecord(id string) string { return filepath.Join(d.root, "layers", id+".ws") }

func (d *disks) workspaceImage(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(d.root, "workspaces", hex.EncodeToString(sum[:12])+".img")
}

// mountLayer makes the session's writable layer and mounts it at target.
func (d *disks) mountLayer(id, gpuType, target string) error {
	img := d.layerImage(id)
	if err := os.Remove(img); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := d.makeImage(img, d.layerLimit(gpuType), false); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	if err := mountImage(img, target, unix.MS_NODEV, "discard,noinit_itable"); err != nil {
		os.Remove(img)
		return fmt.Errorf("writable layer: %w", err)
	}
	return nil
}

// release unmounts the session's writable layer at target, removes it,
// and forgets that the session used its workspace (which stays mounted).
// It succeeds for a session that has none of these.
func (d *disks) release(id, target string) error {
	if err := unmount(target); err != nil {
		return err
	}
	if err := os.Remove(d.layerImage(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove writable layer: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.Remove(d.layerRecord(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// releaseWorkspace unmounts the workspace at dir if no session uses it.
func (d *disks) releaseWorkspace(dir string) error {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	users, err := d.workspaceUsers(dir)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("workspace %s is in use by sessions %s; stop them first", dir, strings.Join(users, ", "))
	}
	if mounted, err := d.mountedImage(dir); err != nil || mounted != d.workspaceImage(dir) {
		return err
	}
	if err := unix.Unmount(dir, 0); err != nil {
		return fmt.Errorf("unmount workspace %s: %w", dir, err)
	}
	return nil
}

// workspaceUsers are the sessions whose records name the workspace dir.
func (d *disks) workspaceUsers(dir string) ([]string, error) {
	recs, err := filepath.Glob(filepath.Join(d.root, "layers", "*.ws"))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, rec := range recs {
		if b, err := os.ReadFile(rec); err == nil && string(b) == dir {
			ids = append(ids, strings.TrimSuffix(filepath.Base(rec), ".ws"))
		}
	}
	return ids, nil
}

// attachWorkspace mounts the workspace's filesystem on its directory dir
// unless it is, making it at the first use and resizing it to a new limit
// if no session uses it, and records that session id uses it. limit 0 is
// as large as the pool.
func (d *disks) attachWorkspace(id, dir string, limit int64) error {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.mountWorkspace(dir, limit); err != nil {
		return err
	}
	return os.WriteFile(d.layerRecord(id), []byte(dir), 0o600)
}

// mountWorkspace mounts the workspace's filesystem on dir unless it is.
// d.mu is held.
func (d *disks) mountWorkspace(dir string, limit int64) error {
	img := d.workspaceImage(dir)
	if limit <= 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(d.root, &st); err != nil {
			return err
		}
		limit = int64(st.Blocks) * st.Bsize
	}
	mounted, err := d.mountedImage(dir)
	if err != nil {
		return err
	}
	if mounted != "" && mounted != img {
		return fmt.Errorf("workspace %s has another filesystem (%s) mounted on it than its own (%s); unmount it", dir, mounted, img)
	}
	fi, err := os.Stat(img)
	if errors.Is(err, os.ErrNotExist) && mounted == "" {
		return d.createWorkspace(dir, img, limit)
	} else if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if fi.Size() != limit && mounted != "" {
		// Resizing is offline: only when no session uses it and nothing
		// on the host holds it.
		users, err := d.workspaceUsers(dir)
		if err != nil {
			return err
		}
		if len(users) > 0 {
			d.log.Info("workspace in use; its new limit applies when no session uses it", "dir", dir, "bytes", limit)
			return nil
		}
		if err := unix.Unmount(dir, 0); err != nil {
			d.log.Warn("workspace busy on the host; its new limit applies later", "dir", dir, "bytes", limit, "err", err)
			return nil
		}
		mounted = ""
	}
	if mounted != "" {
		return nil
	}
	// Resize only a filesystem that nothing holds any more: a mount
	// namespace made while it was mounted (a container starting) may
	// keep it alive for a moment, and its loop device with it.
	if fi.Size() != limit && waitDetached(img) {
		if err := d.resizeWorkspace(img, limit); err != nil {
			return err
		}
	} else if fi.Size() != limit {
		d.log.Warn("workspace still held elsewhere; its new limit applies later", "dir", dir, "bytes", limit)
	}
	if err := mountWorkspaceImage(img, dir); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	return nil
}

// createWorkspace makes the workspace's filesystem and mounts it on dir,
// which must be empty: files written before the workspace had a limit
// would be hidden below it. The new filesystem's root takes dir's owner
// and mode.
func (d *disks) createWorkspace(dir, img string, limit int64) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("workspace %s holds files from before workspaces had enforced limits; move them out (for example to %s.old), then copy them back from inside a session", dir, dir)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	d.log.Info("creating a workspace filesystem", "dir", dir, "image", img, "bytes", limit)
	if err := os.WriteFile(strings.TrimSuffix(img, ".img")+".dir", []byte(dir), 0o600); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if err := d.makeImage(img, limit, false); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if err := mountWorkspaceImage(img, dir); err != nil {
		os.Remove(img)
		return fmt.Errorf("workspace: %w", err)
	}
	// mkfs made the root 0755 root:root and a lost+found no session needs.
	if err := os.Remove(filepath.Join(dir, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("remove lost+found from a new workspace", "dir", dir, "err", err)
	}
	if err := os.Chown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	return os.Chmod(dir, os.FileMode(st.Mode&0o7777))
}

// resizeWorkspace makes the unmounted workspace filesystem in img limit
// bytes large, offline (online growth needs CAP_SYS_RESOURCE, which a
// container running the control plane may lack). A filesystem that holds
// more than limit keeps its size; the control plane then gives sessions
// the workspace read-only until it holds less.
func (d *disks) resizeWorkspace(img string, limit int64) error {
	fi, err := os.Stat(img)
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if fi.Size() == limit {
		return nil
	}
	out, err := exec.Command(d.e2fsck, "-f", "-p", img).CombinedOutput()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && ee.ExitCode() == 1 {
		err = nil // errors corrected
	}
	if err != nil {
		return fmt.Errorf("check workspace %s before resizing it: %w: %s", img, err, bytes.TrimSpace(out))
	}
	if limit > fi.Size() {
		if err := os.Truncate(img, limit); err != nil {
			return fmt.Errorf("grow workspace: %w", err)
		}
		if out, err := exec.Command(d.resize2fs, img).CombinedOutput(); err != nil {
			return fmt.Errorf("grow workspace %s: %w: %s", img, err, bytes.TrimSpace(out))
		}
		d.log.Info("grew a workspace filesystem", "image", img, "bytes", limit)
		return nil
	}
	if out, err := exec.Command(d.resize2fs, img, strconv.FormatInt(limit>>10, 10)+"K").CombinedOutput(); err != nil {
		d.log.Warn("workspace holds more than its new limit; it keeps its size", "image", img, "bytes", limit, "err", err, "out", string(bytes.TrimSpace(out)))
		return nil
	}
	if err := os.Truncate(img, limit); err != nil {
		return fmt.Errorf("shrink workspace: %w", err)
	}
	d.log.Info("shrank a workspace filesystem", "image", img, "bytes", limit)
	return nil
}

// workspaceUsage is the bytes the workspace takes of its limit, from its
// filesystem's counters: its image's size less the space still free, so
// its files and the filesystem's own metadata (a few percent of the
// limit). A full workspace uses its limit. A workspace that has no
// filesystem yet is empty (or holds files from before limits, which is an
// error).
func (d *disks) workspaceUsage(dir string) (int64, error) {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	img := d.workspaceImage(dir)
	mounted, err := d.mountedImage(dir)
	if err != nil {
		return 0, err
	}
	if mounted == "" {
		if _, err := os.Stat(img); errors.Is(err, os.ErrNotExist) {
			entries, err := os.ReadDir(dir)
			if err != nil {
				return 0, err
			}
			if len(entries) > 0 {
				return 0, fmt.Errorf("workspace %s holds files from before workspaces had enforced limits", dir)
			}
			return 0, nil
		}
		if err := mountWorkspaceImage(img, dir); err != nil {
			return 0, fmt.Errorf("workspace: %w", err)
		}
	} else if mounted != img {
		return 0, fmt.Errorf("workspace %s has another filesystem (%s) mounted on it than its own (%s)", dir, mounted, img)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	fi, err := os.Stat(img)
	if err != nil {
		return 0, err
	}
	return max(fi.Size()-int64(st.Bavail)*st.Bsize, 0), nil
}

// mountWorkspaceImage mounts the workspace filesystem in img on dir, with
// the same flags and options wherever a workspace is mounted.
func mountWorkspaceImage(img, dir string) error {
	return mountImage(img, dir, unix.MS_NODEV|unix.MS_NOSUID, "discard,noinit_itable")
}

// mountImage mounts the ext4 filesystem in the image file img at target
// through a loop device that detaches by itself once unmounted: the one
// that already holds img if any (the filesystem is mounted elsewhere
// still), so that it is never mounted through two.
func mountImage(img, target string, flags uintptr, data string) error {
	if dev, err := loopOf(img); err != nil {
		return err
	} else if dev != "" {
		if err := unix.Mount(dev, target, "ext4", flags, data); err != nil {
			return fmt.Errorf("mount %s (%s) on %s: %w", img, dev, target, err)
		}
		return nil
	}
	f, err := os.OpenFile(img, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	dev, err := attachLoop(f)
	if err != nil {
		return fmt.Errorf("attach %s to a loop device: %w", img, err)
	}
	// Until the mount holds the device, this descriptor does; closing it
	// after a failed mount detaches the device.
	defer dev.Close()
	if err := unix.Mount(dev.Name(), target, "ext4", flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", img, target, err)
	}
	return nil
}

// detachWait bounds how long a resize waits for the kernel to let go of a
// workspace's loop device after its unmount.
const detachWait = 5 * time.Second

// waitDetached reports whether no loop device holds img, waiting up to
// detachWait for one to detach by itself.
func waitDetached(img string) bool {
	deadline := time.Now().Add(detachWait)
	for {
		if dev, err := loopOf(img); err == nil && dev == "" {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loopOf is the loop device whose backing file is img, or "".
func loopOf(img string) (string, error) {
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return "", err
	}
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSuffix(string(b), "\n") == img {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f))), nil
		}
	}
	return "", nil
}

// attachLoop binds the file to a free loop device with autoclear and
// returns the device, open.
func attachLoop(backing *os.File) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	for range 32 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		dev, err := os.OpenFile("/dev/loop"+strconv.Itoa(n), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing.Name())
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("configure /dev/loop%d: %w", n, err)
		}
		// Another process took it between asking and configuring.
	}
	return nil, errors.New("no free loop device")
}

// mountedImage is the image file behind the loop device mounted at
// target; "" when nothing is mounted there, and the mount's source when it
// is not a loop device.
func (d *disks) mountedImage(target string) (string, error) {
	src, err := mountSource(target)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	name, ok := strings.CutPrefix(src, "/dev/loop")
	if !ok {
		return src, nil
	}
	b, err := os.ReadFile("/sys/block/loop" + name + "/loop/backing_file")
	if err != nil {
		return "", fmt.Errorf("read the backing file of %s: %w", src, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// errNoDiskLimits is WorkspaceUsage's answer from a runtime without disk
// limits.
var errNoDiskLimits = errors.New("the oci runtime has no disk limits configured")

// WorkspaceUsage is the bytes the workspace at dir uses, read from its
// filesystem's counters: instantly, however many files it holds. It
// fails on a runtime without disk limits.
func (r *Runtime) WorkspaceUsage(dir string) (int64, error) {
	if r.disk == nil {
		return 0, errNoDiskLimits
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	return r.disk.workspaceUsage(abs)
}

// ReleaseWorkspace unmounts the workspace at dir, which no session may be
// using, from the host; its files stay in its filesystem, which the next
// session using dir mounts again. For an admin removing a workspace, or
// a test removing its directory.
func (r *Runtime) ReleaseWorkspace(dir string) error {
	if r.disk == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	return r.disk.releaseWorkspace(abs)
}

// layerDir is where the session's writable layer lies: its own
// filesystem's mount point with disk limits, else its state directory.
func (r *Runtime) layerDir(id string) string {
	if r.disk == nil {
		return r.dir(id)
	}
	return filepath.Join(r.dir(id), "layer")
}

func (r *Runtime) upperDir(id string) string { return filepath.Join(r.layerDir(id), "upper") }
func (r *Runtime) workDir(id string) string  { return filepath.Join(r.layerDir(id), "work") }

// prepareLayer makes the session's writable layer, upper/ and work/, on
// its own filesystem of its GPU type's size with disk limits, and binds
// the workspace dir (if any) to its filesystem of limit bytes.
func (r *Runtime) prepareLayer(id, gpuType, workspace string, limit int64) error {
	if r.disk != nil {
		if err := os.Mkdir(r.layerDir(id), 0o700); err != nil {
			return err
		}
		if err := r.disk.mountLayer(id, gpuType, r.layerDir(id)); err != nil {
			return err
		}
		if workspace != "" {
			if err := r.disk.attachWorkspace(id, workspace, limit); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{r.upperDir(id), r.workDir(id)} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// releaseLayer undoes prepareLayer once the overlay is unmounted.
func (r *Runtime) releaseLayer(id string) error {
	if r.disk == nil {
		return nil
	}
	return r.disk.release(id, r.layerDir(id))
}
