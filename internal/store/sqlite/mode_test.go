package sqlite_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
)

// The store holds token hashes and the audit log: its files are the
// owner's alone, whatever the umask, and a database left readable by an
// older version is closed to others when opened.
func TestFilesPrivate(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask, which leaves new files readable by all
	t.Cleanup(func() { syscall.Umask(old) })
	dir := t.TempDir()
	path := filepath.Join(dir, "devgpu.db")
	s := open(t, path)
	// A write makes SQLite create the -wal and -shm files.
	if err := s.CreateUser(t.Context(), &store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), perm)
		}
	}

	// A database an older version left open to everyone.
	legacy := filepath.Join(dir, "legacy.db")
	s2, err := sqlite.Open(t.Context(), legacy)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if err := os.Chmod(legacy, 0o644); err != nil {
		t.Fatal(err)
	}
	open(t, legacy)
	if fi, err := os.Stat(legacy); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("reopened legacy database: %v, %v; want mode 0600", fi.Mode(), err)
	}
}
