//go:build linux

package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// A pid file that names a process which is not a devgpu server (the pid
// was reused, or the file was written by someone else) never gets that
// process signalled.
func TestServerStopSignalsOnlyADevgpuServer(t *testing.T) {
	dir := t.TempDir()
	victim := exec.Command("sleep", "600")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Process.Kill(); _ = victim.Wait() })
	start, err := procStart(victim.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"another program": fmt.Sprintf("%d %s\n", victim.Process.Pid, start),
		"reused pid":      fmt.Sprintf("%d 1\n", victim.Process.Pid),
	} {
		if err := os.WriteFile(filepath.Join(dir, pidFileName), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := Execute([]string{"server", "stop", "--data", dir}); got != failureExit {
			t.Errorf("%s: server stop exited %d, want %d", name, got, failureExit)
		}
		if err := victim.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("%s: server stop signalled a process that is not a devgpu server", name)
		}
		if s, err := procStart(victim.Process.Pid); err != nil || s != start {
			t.Fatalf("%s: the process is gone (%v)", name, err)
		}
	}
}

// A server refuses a data directory that a live devgpu server recorded,
// and takes over a pid file whose process is gone.
func TestWritePidFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, pidFileName)
	if err := os.WriteFile(path, []byte("999999999 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	remove, err := writePidFile(dir)
	if err != nil {
		t.Fatalf("a stale pid file was not taken over: %v", err)
	}
	if _, ok := readServerPid(path); ok {
		// The test binary is not `devgpu server`: it must not count as one.
		t.Fatal("the test process counts as a devgpu server")
	}
	remove()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the pid file outlived its server: %v", err)
	}
}
