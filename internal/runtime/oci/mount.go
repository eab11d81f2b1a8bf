package oci

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// mountOverlay mounts an overlay of the read-only image dir lower with the
// session's writable upper and work dirs at target.
func mountOverlay(lower, upper, work, target string) error {
	for _, d := range []string{lower, upper, work} {
		// overlayfs splits its options on these.
		if strings.ContainsAny(d, ":,") {
			return fmt.Errorf("mount overlay: path %q holds ':' or ','", d)
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", target, "overlay", unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", target, err)
	}
	return nil
}

// unmount unmounts everything mounted at target. A target that is not a
// mount point, or does not exist, is fine.
func unmount(target string) error {
	for range 10 {
		err := unix.Unmount(target, 0)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(target, unix.MNT_DETACH)
		}
		switch {
		case err == nil:
			continue // another mount may lie below
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted", target)
}

// notMountPointError is mountSource's answer for a target that is no
// mount point; it is an os.ErrNotExist. A failure to read mountinfo is
// not one, so that callers can tell the two apart.
type notMountPointError struct{ target string }

func (e *notMountPointError) Error() string {
	return e.target + " is not a mount point: " + os.ErrNotExist.Error()
}

func (e *notMountPointError) Unwrap() error { return os.ErrNotExist }

// mountSource is the source of the topmost mount at target, from
// mountinfo; os.ErrNotExist when target is no mount point.
func mountSource(target string) (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	src := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMountPath(f[4]) != target {
			continue
		}
		for i, field := range f {
			if field == "-" && i+2 < len(f) {
				src = unescapeMountPath(f[i+2]) // later lines are mounted on top
			}
		}
	}
	if src == "" {
		return "", &notMountPointError{target}
	}
	return src, nil
}

// isMounted reports whether target is a mount point, from mountinfo.
func isMounted(target string) (bool, error) {
	_, err := mountSource(target)
	if nm := (*notMountPointError)(nil); errors.As(err, &nm) {
		return false, nil
	}
	return err == nil, err
}

// unescapeMountPath undoes mountinfo's octal escapes of space, tab,
// newline and backslash.
func unescapeMountPath(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// prepareRootfs writes into the session's overlay what the session needs
// whatever the image holds: its home, a /tmp and its hostname, owned by
// the session's root, host uid and gid rootID. The image is untrusted, so
// every path resolves inside root (os.Root): a symlink such as
// /etc -> /host/etc cannot make the control plane write outside it.
func prepareRootfs(rootfs, hostname string, rootID int) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	var made []string
	mkdir := func(name string, mode os.FileMode) error {
		if _, err := root.Lstat(name); !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := root.Mkdir(name, mode); err != nil {
			return err
		}
		made = append(made, name)
		return root.Chmod(name, mode) // past the umask
	}
	if err := mkdir(homeInContainer[1:], 0o700); err != nil {
		return err
	}
	if err := mkdir("tmp", 0o1777); err != nil {
		return err
	}
	if err := mkdir("etc", 0o755); err != nil {
		return err
	}
	if err := root.WriteFile("etc/hostname", []byte(hostname+"\n"), 0o644); err != nil {
		return err
	}
	for _, name := range append(made, "etc/hostname") {
		if err := root.Lchown(name, rootID, rootID); err != nil {
			return err
		}
	}
	return nil
}
