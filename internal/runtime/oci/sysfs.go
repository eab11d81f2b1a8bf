package oci

import (
	"errors"
	"fmt"
	"os"
	goruntime "runtime"

	"golang.org/x/sys/unix"
)

// mountSysfs mounts, read-only, a sysfs of the network namespace netns at
// /sys in the session's root filesystem. runc cannot: a session's user
// namespace does not own a network namespace made beforehand (Network),
// and mounting sysfs needs privilege over the network namespace whose
// devices it shows. The host mounts it from a thread inside netns, so that
// /sys/class/net shows the session's interfaces, not the host's.
func (r *Runtime) mountSysfs(id, netns string) error {
	root, err := os.OpenRoot(r.rootfs(id))
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.Mkdir("sys", 0o555); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mount sysfs: %w", err)
	}
	target, err := root.Open("sys")
	if err != nil {
		return fmt.Errorf("mount sysfs: %w", err)
	}
	defer target.Close()
	if fi, err := target.Stat(); err != nil || !fi.IsDir() {
		return fmt.Errorf("mount sysfs: the image's /sys is not a directory")
	}
	mnt, err := sysfsIn(netns)
	if err != nil {
		return fmt.Errorf("mount sysfs: %w", err)
	}
	defer unix.Close(mnt)
	if err := unix.MoveMount(mnt, "", int(target.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount sysfs: move_mount: %w", err)
	}
	return nil
}

// sysfsIn makes a detached, read-only sysfs mount of network namespace
// netns and returns its descriptor.
func sysfsIn(netns string) (int, error) {
	ns, err := os.Open(netns)
	if err != nil {
		return -1, err
	}
	defer ns.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return -1, err
	}
	defer self.Close()
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	// A thread of its own: one that cannot go back to the host's network
	// namespace is never used again (it exits with the goroutine).
	go func() {
		goruntime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			done <- result{-1, fmt.Errorf("enter network namespace %s: %w", netns, err)}
			return
		}
		fd, err := newSysfs()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			goruntime.UnlockOSThread()
		}
		done <- result{fd, err}
	}()
	res := <-done
	return res.fd, res.err
}

// newSysfs makes a sysfs superblock, in the calling thread's network
// namespace, and a detached read-only mount of it.
func newSysfs() (int, error) {
	fs, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen: %w", err)
	}
	defer unix.Close(fs)
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, fmt.Errorf("fsconfig: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsmount: %w", err)
	}
	return mnt, nil
}
