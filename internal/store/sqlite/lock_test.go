package sqlite_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
)

// holderEnv makes the test binary, run again by these tests, a server
// process that holds the store at its value until its stdin closes.
const holderEnv = "DEVGPU_TEST_SQLITE_HOLDER"

func TestMain(m *testing.M) {
	if path := os.Getenv(holderEnv); path != "" {
		os.Exit(holdStore(path))
	}
	os.Exit(m.Run())
}

// holdStore opens the store at path, says "ready" on stdout, and closes it
// when stdin ends.
func holdStore(path string) int {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	if err := s.Close(); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

// startHolder runs a second process that opens the store at path, and
// returns once it holds it.
func startHolder(t *testing.T, path string) (cmd *exec.Cmd, release func()) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("the holder process said %q, %v; want ready", line, err)
	}
	return cmd, func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("the holder process: %v", err)
		}
	}
}

// wantInUse checks that err refuses the store at path held by pid, in the
// words an operator reads.
func wantInUse(t *testing.T, err error, path string, pid int) {
	t.Helper()
	var inUse *sqlite.InUseError
	if !errors.Is(err, sqlite.ErrInUse) || !errors.As(err, &inUse) || inUse.PID != pid {
		t.Fatalf("Open of a store in use = %v; want ErrInUse naming pid %d", err, pid)
	}
	want := fmt.Sprintf("the SQLite store %s is in use by another devgpu server (pid %d); SQLite serves one server only: "+
		"stop that server, or move to PostgreSQL to run several replicas", path, pid)
	if err.Error() != want {
		t.Errorf("Open of a store in use says\n%s\nwant\n%s", err, want)
	}
}

func TestOpenInUseInProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devgpu.db")
	s, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sqlite.Open(t.Context(), path)
	wantInUse(t, err, path, os.Getpid())
	// The refused Open took nothing away from the holder.
	if err := s.CreateUser(t.Context(), &store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	// Another store beside it is another lock.
	open(t, filepath.Join(filepath.Dir(path), "other.db"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, path).UserByName(t.Context(), "alice"); err != nil {
		t.Errorf("reopened after Close: %v", err)
	}
}

func TestOpenInUseByAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devgpu.db")
	holder, release := startHolder(t, path)
	_, err := sqlite.Open(t.Context(), path)
	wantInUse(t, err, path, holder.Process.Pid)
	release()
	// A server that stopped lets the next one in.
	s := open(t, path)
	if err := s.CreateUser(t.Context(), &store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}

	// The other way round: this process holds it, another is refused.
	out, err := holderCommand(path).Output()
	if err == nil || !strings.Contains(string(out), fmt.Sprintf("in use by another devgpu server (pid %d)", os.Getpid())) {
		t.Errorf("a second process opening the store: %v, said %q; want it refused naming pid %d", err, out, os.Getpid())
	}
}

func holderCommand(path string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+path)
	return cmd
}

// TestOpenAfterCrash: the kernel drops a killed server's lock, so nothing
// stands in the way of the next server.
func TestOpenAfterCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devgpu.db")
	holder, _ := startHolder(t, path)
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder.Wait()
	if _, err := os.Stat(path + ".lock"); err != nil {
		t.Errorf("the lock file: %v; want it kept", err)
	}
	open(t, path)
}

// The store reached through a symbolic link and through its target is one
// store, and one lock: the second Open is refused.
func TestOpenInUseThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devgpu.db")
	link := filepath.Join(dir, "link.db")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	_, err := sqlite.Open(t.Context(), link)
	wantInUse(t, err, link, os.Getpid())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The other way round, with the database not yet created: linked
	// through its directory.
	dirLink := filepath.Join(t.TempDir(), "d")
	if err := os.Symlink(dir, dirLink); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dirLink, "new.db")
	open(t, other)
	_, err = sqlite.Open(t.Context(), filepath.Join(dir, "new.db"))
	wantInUse(t, err, filepath.Join(dir, "new.db"), os.Getpid())
}

// A symbolic link planted as the lock file is never followed: Open refuses
// the store in one sentence and the link's target is left untouched; a
// lock file that is not a regular file is refused too.
func TestOpenRefusesPlantedLockFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devgpu.db")
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, path+".lock"); err != nil {
		t.Fatal(err)
	}
	_, err := sqlite.Open(t.Context(), path)
	want := fmt.Sprintf("open sqlite %s: its lock file %s.lock is a symbolic link, which devgpu never follows; remove it", path, path)
	if err == nil || err.Error() != want {
		t.Fatalf("Open with a symbolic link as its lock file = %v; want %q", err, want)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me\n" {
		t.Fatalf("the link's target after the refused Open: %q, %v; want it untouched", b, err)
	}

	fifo := filepath.Join(dir, "fifo.db")
	if err := syscall.Mkfifo(fifo+".lock", 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = sqlite.Open(t.Context(), fifo)
	if err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Fatalf("Open with a FIFO as its lock file = %v; want refused, not a regular file", err)
	}
}
