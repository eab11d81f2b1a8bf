package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// command builds an exec.Cmd for argv in its own process group, so that when
// ctx ends (a timeout) everything it started is killed, not just its leader.
// Stdin is /dev/null unless the caller sets it.
func command(ctx context.Context, argv []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// runOnce runs argv to completion, its stdout into stdout (discarded if nil),
// and returns the wall time from start to exit. A non-zero exit, a timeout or
// a failure to start is an error that carries the tail of stderr.
func runOnce(ctx context.Context, argv []string, timeout time.Duration, stdout io.Writer) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := command(ctx, argv)
	cmd.Stdout = stdout
	stderr := &tailBuffer{max: 512}
	cmd.Stderr = stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, runError(ctx, err, stderr)
	}
	return d, nil
}

// runError describes a failed run, preferring the timeout over the signal
// that enforced it.
func runError(ctx context.Context, err error, stderr *tailBuffer) error {
	msg := err.Error()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		msg = "timed out"
	}
	if tail := strings.TrimSpace(stderr.String()); tail != "" {
		msg += ": " + strings.ReplaceAll(tail, "\n", " | ")
	}
	return errors.New(msg)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
