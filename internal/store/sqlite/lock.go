package sqlite

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrInUse: another devgpu server holds the SQLite store.
var ErrInUse = errors.New("the SQLite store is in use by another devgpu server")

// InUseError names the store and the process that holds it.
type InUseError struct {
	Path string
	PID  int // 0: not known (it has not written its pid yet)
}

func (e *InUseError) Error() string {
	holder := "pid unknown"
	if e.PID > 0 {
		holder = "pid " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("the SQLite store %s is in use by another devgpu server (%s); SQLite serves one server only: "+
		"stop that server, or move to PostgreSQL to run several replicas", e.Path, holder)
}

func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// storeLock is the exclusive flock on <path>.lock that makes a SQLite
// store one server's. The kernel drops it when the process ends, however
// it ends, so a crashed server leaves nothing to clean up. The file
// stays: removing it would let a later Open lock a new file while another
// holds the old one.
type storeLock struct{ f *os.File }

// lockFile takes the lock of the store at path, without waiting, and
// writes this process's pid into the lock file, to be named by the next
// server that tries. The lock is keyed on the database's real path, so
// that the store reached through a symbolic link and through its target
// is one lock; the lock file itself is never followed when it is a link
// (one planted there could point the truncate and pid write anywhere).
func lockFile(path string) (*storeLock, error) {
	real, err := realPath(path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: resolve its path to lock it: %w", path, err)
	}
	name := real + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("open sqlite %s: its lock file %s is a symbolic link, which devgpu never follows; remove it", path, name)
	}
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: lock it: %w", path, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("open sqlite %s: lock it: %w", path, err)
		}
		return nil, fmt.Errorf("open sqlite %s: its lock file %s is not a regular file (%s); remove it, or move the database", path, name, fi.Mode().Type())
	}
	// flock, not fcntl locks: an flock belongs to the open file, so a
	// second Open in this same process is refused as well.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid := readPID(f)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &InUseError{Path: path, PID: pid}
		}
		return nil, fmt.Errorf("open sqlite %s: lock %s: %w", path, name, err)
	}
	// Best effort: on a full disk the pid may not fit, and the lock,
	// which is what counts, is held already.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &storeLock{f: f}, nil
}

// realPath is path with every symbolic link resolved; a database not
// created yet resolves through its directory.
func realPath(path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		return real, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(path)), nil
}

func readPID(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil {
		return 0
	}
	return pid
}

// release lets the next server take the store. Closing the file drops the
// flock.
func (l *storeLock) release() error {
	l.f.Truncate(0) // the pid no longer names a holder
	return l.f.Close()
}
