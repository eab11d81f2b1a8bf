package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
)

// chunk is one read from the PTY and when it arrived.
type chunk struct {
	data []byte
	at   time.Time
}

// ptyProc is a command running on a PTY, as a terminal user would run it,
// with its output timed as it arrives.
type ptyProc struct {
	cmd    *exec.Cmd
	ptmx   *os.File
	start  time.Time
	out    chan chunk // closed when the PTY reaches EOF
	exited chan error // the command's exit, once
	// window is the recent output that waitFor searches (bounded), and
	// lastAt when its newest byte arrived.
	window []byte
	lastAt time.Time
}

// startPTY starts argv on a new PTY of 40x120 in its own session. TERM is
// set to xterm when the environment has none, as a terminal would.
func startPTY(ctx context.Context, argv []string) (*ptyProc, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// pty.Start makes the child a session (and so process group) leader.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Env = os.Environ()
	if os.Getenv("TERM") == "" || os.Getenv("TERM") == "dumb" {
		cmd.Env = append(cmd.Env, "TERM=xterm")
	}
	p := &ptyProc{cmd: cmd, out: make(chan chunk, 1<<14), exited: make(chan error, 1)}
	p.start = time.Now()
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		return nil, fmt.Errorf("start %s on a pty: %w", argv[0], err)
	}
	p.ptmx = ptmx
	go p.read()
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

func (p *ptyProc) read() {
	defer close(p.out)
	buf := make([]byte, 32<<10)
	for {
		n, err := p.ptmx.Read(buf)
		if n > 0 {
			p.out <- chunk{data: bytes.Clone(buf[:n]), at: time.Now()}
		}
		if err != nil { // EIO once every holder of the slave side has gone
			return
		}
	}
}

func (p *ptyProc) send(s string) error {
	_, err := p.ptmx.WriteString(s)
	return err
}

// errEOF means the command closed its terminal before the awaited output.
var errEOF = errors.New("terminal closed")

// waitFor reads output until want appears in it and returns the arrival time
// of the chunk that completed it. Output up to and including want is consumed.
func (p *ptyProc) waitFor(want []byte, timeout time.Duration) (time.Time, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if i := bytes.Index(p.window, want); i >= 0 {
			p.window = p.window[i+len(want):]
			return p.lastAt, nil // it came with earlier output
		}
		select {
		case c, ok := <-p.out:
			if !ok {
				return time.Time{}, fmt.Errorf("%w; last output: %q", errEOF, tail(p.window, 200))
			}
			p.window = append(p.window, c.data...)
			p.lastAt = c.at
			if i := bytes.Index(p.window, want); i >= 0 {
				p.window = p.window[i+len(want):]
				return c.at, nil
			}
			if over := len(p.window) - 64<<10; over > 0 {
				p.window = p.window[over:]
			}
		case <-timer.C:
			return time.Time{}, fmt.Errorf("no %q after %v; last output: %q", want, timeout, tail(p.window, 200))
		}
	}
}

// quiet consumes output until none has come for d (or max has passed).
func (p *ptyProc) quiet(d, max time.Duration) {
	deadline := time.After(max)
	for {
		select {
		case c, ok := <-p.out:
			if !ok {
				return
			}
			p.window = append(p.window, c.data...)
		case <-time.After(d):
			p.window = p.window[:0]
			return
		case <-deadline:
			p.window = p.window[:0]
			return
		}
	}
}

// close types exit into the shell and waits for the command to end, killing
// its process group if it has not within timeout. It reports how the
// command ended.
func (p *ptyProc) close(timeout time.Duration) error {
	_ = p.send("\x15exit\r") // ^U first: drop anything left on the line
	go func() {              // keep draining so the command never blocks on output
		for range p.out {
		}
	}()
	var err error
	select {
	case err = <-p.exited:
	case <-time.After(timeout):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		err = fmt.Errorf("did not exit within %v of exit; killed", timeout)
	}
	p.ptmx.Close()
	return err
}

// probe returns a command line to type into a shell and the output that
// proves the shell ran it. The typed text does not contain the output (the
// sum is computed by the shell), so the terminal's echo of the typing does
// not count as an answer.
func probe() (line string, want []byte) {
	tag := rand.Uint32()
	a, b := rand.IntN(1000)+1, rand.IntN(1000)+1
	return fmt.Sprintf("echo BENCH%08x_$((%d+%d))_OK\r", tag, a, b),
		fmt.Appendf(nil, "BENCH%08x_%d_OK", tag, a+b)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.ToValidUTF8(string(b), "?")
}
