// Package testutil holds what the tests share: the real devgpu binary built
// once per test process, and the timeouts every test uses.
package testutil

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Timeouts shared by tests, so that slow CI machines are handled in one place.
const (
	WaitShort  = 5 * time.Second
	WaitMedium = 15 * time.Second
	WaitLong   = 60 * time.Second
	Poll       = 20 * time.Millisecond
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// Binary builds cmd/devgpu once for the whole test process and returns its
// path. The binary lives in a temporary directory removed by Cleanup.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "devgpu-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "devgpu")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/devgpu")
		cmd.Dir = root
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build devgpu: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

var (
	staticOnce sync.Once
	staticPath string
	staticErr  error
	staticOut  []byte
)

// StaticBinary builds cmd/devgpu once, statically linked (CGO_ENABLED=0),
// for tests that run it where the host's libc is absent, such as inside a
// container, and returns its path. Cleanup removes it.
func StaticBinary(t testing.TB) string {
	t.Helper()
	staticOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			staticErr = err
			return
		}
		dir, err := os.MkdirTemp("", "devgpu-static-")
		if err != nil {
			staticErr = err
			return
		}
		staticPath = filepath.Join(dir, "devgpu")
		cmd := exec.Command("go", "build", "-o", staticPath, "./cmd/devgpu")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		staticOut, staticErr = cmd.CombinedOutput()
	})
	if staticErr != nil {
		t.Fatalf("build static devgpu: %v\n%s", staticErr, staticOut)
	}
	return staticPath
}

// Cleanup removes the built binaries; call it from TestMain after m.Run.
func Cleanup() {
	for _, p := range []string{binPath, staticPath} {
		if p != "" {
			os.RemoveAll(filepath.Dir(p))
		}
	}
}

// ModuleRoot is the directory of the go.mod above the working directory:
// the repository root when a test runs in one of its packages.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// Context returns a context that ends with the test or after d.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond until it holds or d passes.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(Poll)
	}
}

// ShortTempDir returns a temporary directory with a short path, for unix
// sockets, whose paths are limited to about 100 bytes.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "dg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Logger is where a runtime under test logs: to stderr at Debug under
// go test -v, nowhere otherwise.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
