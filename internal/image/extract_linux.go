package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafeLayer is returned for a layer entry that names a path outside
// the root filesystem, such as "../etc/passwd".
var ErrUnsafeLayer = errors.New("layer entry escapes the root filesystem")

// OCI whiteouts: ".wh.NAME" deletes NAME from the layers below, and
// ".wh..wh..opq" in a directory hides everything the layers below put there.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// extractor applies image layers, in order, to one directory.
//
// Every path is resolved by the kernel with openat2(RESOLVE_IN_ROOT), so
// that symbolic links (absolute ones and "..") are followed as they would be
// inside the container, where the directory is "/": whatever a layer holds,
// nothing is created, changed or deleted outside the directory. The last
// component of a path is never followed; it is replaced.
type extractor struct {
	root  int  // O_PATH descriptor of the directory
	owner bool // whether to apply ownership (only root may)

	layer map[string]bool     // paths the current layer has written
	dirs  map[string]dirAttrs // directory modes and times, applied at the end
}

type dirAttrs struct {
	mode  uint32
	mtime time.Time
}

func newExtractor(dir string) (*extractor, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return &extractor{root: fd, owner: os.Geteuid() == 0, dirs: map[string]dirAttrs{}}, nil
}

// Close releases the directory.
func (x *extractor) Close() error { return unix.Close(x.root) }

// apply applies one uncompressed layer.
func (x *extractor) apply(ctx context.Context, r io.Reader) error {
	x.layer = map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := x.entry(hdr, tr); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
}

// cleanName turns a tar entry name into a path relative to the root, "" for
// the root itself, refusing names that climb out of it.
func cleanName(name string) (string, error) {
	c := strings.TrimLeft(path.Clean("/"+name), "/")
	if c2 := strings.TrimLeft(path.Clean(name), "/"); c2 == ".." || strings.HasPrefix(c2, "../") {
		return "", ErrUnsafeLayer
	}
	return c, nil
}

func split(rel string) (parent, base string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

func (x *extractor) mark(rel string) {
	for rel != "" && !x.layer[rel] {
		x.layer[rel] = true
		rel, _ = split(rel)
	}
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		return nil // the root directory itself keeps its mode
	}
	parent, base := split(rel)
	if base == whiteoutOpaque {
		return x.opaque(parent)
	}
	if victim, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		if victim == "" || victim == "." || victim == ".." {
			return ErrUnsafeLayer
		}
		return x.whiteout(parent, victim)
	}
	x.mark(rel)

	pfd, err := x.mkdirAll(parent)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)

	isDir := hdr.Typeflag == tar.TypeDir
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		existingDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		switch {
		case isDir && existingDir:
			// merge into the directory of a lower layer
		case existingDir:
			if err := removeAllAt(pfd, base); err != nil {
				return err
			}
		default:
			if err := unix.Unlinkat(pfd, base, 0); err != nil && err != unix.ENOENT {
				return err
			}
		}
	}

	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(pfd, base, 0o755); err != nil && err != unix.EEXIST {
			return err
		}
		x.dirs[rel] = dirAttrs{mode: mode, mtime: hdr.ModTime}
	case tar.TypeReg, tar.TypeRegA:
		if err := writeFileAt(pfd, base, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return err
		}
	case tar.TypeLink:
		return x.hardlink(pfd, base, hdr.Linkname) // shares the target's attributes
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		typ := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		err := unix.Mknodat(pfd, base, typ|mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))))
		if errors.Is(err, unix.EPERM) && hdr.Typeflag != tar.TypeFifo {
			return nil // devices need CAP_MKNOD; the runtime provides /dev
		}
		if err != nil {
			return err
		}
	default:
		return nil // pax global headers and the like carry no file
	}

	if x.owner {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	for k, v := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			p := "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + base
			if err := unix.Lsetxattr(p, attr, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
				return fmt.Errorf("xattr %s: %w", attr, err)
			}
		}
	}
	if hdr.Typeflag == tar.TypeSymlink || isDir {
		if hdr.Typeflag == tar.TypeSymlink {
			return setTimesAt(pfd, base, hdr.ModTime)
		}
		return nil // directories get mode and times at the end
	}
	// After chown, which clears set-id bits.
	if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
		return err
	}
	return setTimesAt(pfd, base, hdr.ModTime)
}

func writeFileAt(dirfd int, name string, r io.Reader) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func setTimesAt(dirfd int, name string, t time.Time) error {
	if t.IsZero() {
		return nil
	}
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.UtimesNanoAt(dirfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// hardlink links name in dirfd to target, a path in the image.
func (x *extractor) hardlink(dirfd int, name, target string) error {
	rel, err := cleanName(target)
	if err != nil || rel == "" {
		return ErrUnsafeLayer
	}
	tparent, tbase := split(rel)
	tfd, err := x.resolve(tparent)
	if err != nil {
		return fmt.Errorf("link target %s: %w", target, err)
	}
	defer unix.Close(tfd)
	// Flags 0: a symbolic link target is linked itself, not followed.
	if err := unix.Linkat(tfd, tbase, dirfd, name, 0); err != nil {
		return fmt.Errorf("link to %s: %w", target, err)
	}
	return nil
}

// resolve opens the directory rel, following symbolic links as if the root
// were "/".
func (x *extractor) resolve(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(x.root, rel, how)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue // a concurrent rename somewhere; the kernel asks to retry
		}
		return fd, err
	}
}

// mkdirAll opens the directory rel, creating what is missing of it,
// including the target of a dangling symbolic link on the way (inside the
// root, as the kernel resolves it).
func (x *extractor) mkdirAll(rel string) (int, error) { return x.mkdirAllDepth(rel, 0) }

func (x *extractor) mkdirAllDepth(rel string, depth int) (int, error) {
	fd, err := x.resolve(rel)
	if err == nil || err != unix.ENOENT || rel == "" {
		return fd, err
	}
	if depth > 40 {
		return -1, unix.ELOOP
	}
	parent, base := split(rel)
	pfd, err := x.mkdirAllDepth(parent, depth+1)
	if err != nil {
		return -1, err
	}
	err = unix.Mkdirat(pfd, base, 0o755)
	if err == unix.EEXIST {
		buf := make([]byte, unix.PathMax)
		n, lerr := unix.Readlinkat(pfd, base, buf)
		if lerr == nil { // a dangling link: create its target
			target := string(buf[:n])
			if !path.IsAbs(target) {
				target = path.Join("/", parent, target)
			}
			tfd, terr := x.mkdirAllDepth(strings.TrimLeft(path.Clean("/"+target), "/"), depth+1)
			if terr != nil {
				unix.Close(pfd)
				return -1, terr
			}
			unix.Close(tfd)
		}
		err = nil
	}
	unix.Close(pfd)
	if err != nil {
		return -1, err
	}
	return x.resolve(rel)
}

// whiteout deletes name from the directory parent, if both exist.
func (x *extractor) whiteout(parent, name string) error {
	pfd, err := x.resolve(parent)
	if err == unix.ENOENT || err == unix.ENOTDIR {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return removeAllAt(pfd, name)
}

// opaque empties the directory rel of all the current layer did not write.
func (x *extractor) opaque(rel string) error {
	pfd, err := x.mkdirAll(rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	fd, err := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	x.mark(rel)
	return x.clearExcept(fd, rel)
}

// clearExcept removes from the open directory fd (at path rel) what the
// current layer did not write, and closes fd.
func (x *extractor) clearExcept(fd int, rel string) error {
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		crel := path.Join(rel, n)
		if !x.layer[crel] {
			if err := removeAllAt(fd, n); err != nil {
				return err
			}
			continue
		}
		cfd, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOTDIR || err == unix.ELOOP {
			continue
		}
		if err != nil {
			return err
		}
		if err := x.clearExcept(cfd, crel); err != nil {
			return err
		}
	}
	return nil
}

// removeAllAt removes name from dirfd, recursively, never following a
// symbolic link.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return err
	}
	for _, n := range names {
		if err := removeAllAt(fd, n); err != nil {
			f.Close()
			return err
		}
	}
	f.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return err
	}
	return nil
}

// finish gives directories their modes and times, now that nothing more is
// written into them.
func (x *extractor) finish() error {
	for rel, a := range x.dirs {
		parent, base := split(rel)
		pfd, err := x.resolve(parent)
		if err != nil {
			continue // whited out by a later layer
		}
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			unix.Close(pfd)
			continue
		}
		err = unix.Fchmodat(pfd, base, a.mode, 0)
		if err == nil {
			err = setTimesAt(pfd, base, a.mtime)
		}
		unix.Close(pfd)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
	}
	return nil
}
