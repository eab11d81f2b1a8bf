package agent

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

const (
	// copyBufSize is large because bulk output (`head -c 1G /dev/zero`) is
	// measured against OpenSSH; a pipe holds 64 KiB by default.
	copyBufSize = 64 << 10
	// After the child exits, its output is read on only while more keeps
	// coming (drainIdle) and for at most drainMax, so that a background job
	// holding the pipe or terminal cannot keep the channel open forever.
	drainIdle = 250 * time.Millisecond
	drainMax  = 2 * time.Second
)

var bufPool = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// process is a child started for a "shell" or "exec" request. Like sshd's
// children it leads a session and process group of its own (pid = pgid =
// sid): signals to the group reach its background jobs too, and a pty
// becomes its controlling terminal.
type process struct {
	cmd     *exec.Cmd
	tty     *os.File   // pty master, nil without a pty
	stdin   *os.File   // write end of the child's stdin pipe, nil with a pty
	outputs []*os.File // read ends: stdout and stderr, or the pty master
	done    chan struct{}
	exitAt  time.Time // set before done is closed
}

// startProcess starts cmd on a new pty of the given size, or on pipes when
// size is nil.
func startProcess(cmd *exec.Cmd, size *windowChange) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	var err error
	if size != nil {
		err = p.startPTY(size)
	} else {
		err = p.startPipes(true)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// startPipes starts the command with stdout and stderr on pipes, and stdin
// on a pipe too when withStdin, else on /dev/null.
func (p *process) startPipes(withStdin bool) error {
	cmd := p.cmd
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var err error
	pipe := func() (r, w *os.File) {
		if err == nil {
			r, w, err = os.Pipe()
		}
		return r, w
	}
	var inR, inW *os.File
	if withStdin {
		inR, inW = pipe()
	}
	outR, outW := pipe()
	errR, errW := pipe()
	if err == nil {
		if withStdin {
			cmd.Stdin = inR
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		err = orphans.start(cmd)
	}
	// The child holds its own copies of its ends; ours would hide EOF.
	for _, f := range []*os.File{inR, outW, errW} {
		if f != nil {
			f.Close()
		}
	}
	if err != nil {
		for _, f := range []*os.File{inW, outR, errR} {
			if f != nil {
				f.Close()
			}
		}
		return err
	}
	p.stdin, p.outputs = inW, []*os.File{outR, errR}
	return nil
}

func (p *process) startPTY(size *windowChange) error {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return err
	}
	defer tty.Close()
	// pty.Open calls Fd(), which puts the master into blocking mode. Back to
	// non-blocking, so that reads honour deadlines and Close.
	if err := control(ptmx, func(fd int) error { return unix.SetNonblock(fd, true) }); err != nil {
		ptmx.Close()
		return err
	}
	if err := setWinsize(ptmx, size); err != nil {
		ptmx.Close()
		return err
	}
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = tty, tty, tty
	// A session with the pty as controlling terminal: the line discipline
	// turns ^C into SIGINT for the foreground job, not for the shell.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := orphans.start(p.cmd); err != nil {
		ptmx.Close()
		return err
	}
	p.tty = ptmx
	p.outputs = []*os.File{ptmx}
	return nil
}

// control runs f on f's descriptor without Fd(), which would make it blocking.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func setWinsize(ptmx *os.File, size *windowChange) error {
	ws := &unix.Winsize{Row: clamp16(size.Rows), Col: clamp16(size.Columns), Xpixel: clamp16(size.Width), Ypixel: clamp16(size.Height)}
	return control(ptmx, func(fd int) error { return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, ws) })
}

func clamp16(v uint32) uint16 { return uint16(min(v, 0xffff)) }

func (p *process) pid() int { return p.cmd.Process.Pid }

// signal delivers sig to the child's process group.
func (p *process) signal(sig syscall.Signal) error {
	return syscall.Kill(-p.pid(), sig)
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait reaps the child, then makes the output readers give up once the
// output stops.
func (p *process) wait() *os.ProcessState {
	_ = orphans.wait(p.cmd)
	p.exitAt = time.Now()
	close(p.done)
	for _, f := range p.outputs {
		_ = f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	return p.cmd.ProcessState
}

// copyOut copies one of the child's outputs to w until EOF (a pty gives EIO
// instead) or, after the child exited, until the output pauses. Every chunk
// is activity, unless act is nil (a job's output, which no user watches).
func (p *process) copyOut(w io.Writer, r *os.File, act *activity) {
	b := bufPool.Get().(*[copyBufSize]byte)
	defer bufPool.Put(b)
	buf := b[:]
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if act != nil {
				act.touch()
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				// Nobody listens: let the child see EPIPE or a hung-up terminal.
				r.Close()
				return
			}
		}
		if err != nil {
			return
		}
		p.drainAfterExit(r)
	}
}

// drainAfterExit, once the child has exited, lets a read of its output
// wait only while more keeps coming (drainIdle) and for at most drainMax
// after the exit, so that a background job holding the output open does
// not keep the channel.
func (p *process) drainAfterExit(r *os.File) {
	if !p.exited() {
		return
	}
	d := time.Now().Add(drainIdle)
	if last := p.exitAt.Add(drainMax); d.After(last) {
		d = last
	}
	_ = r.SetReadDeadline(d)
}

// copyIn copies the channel to the child's stdin, every chunk of it
// activity; EOF closes the pipe. A terminal has no half-close, so there it
// only stops copying.
func (p *process) copyIn(r io.Reader, act *activity) {
	b := bufPool.Get().(*[copyBufSize]byte)
	defer bufPool.Put(b)
	buf := b[:]
	w := p.stdin
	if p.tty != nil {
		w = p.tty
	}
	for {
		n, err := r.Read(buf)
		if n > 0 {
			act.touch()
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if p.tty == nil {
		p.stdin.Close()
	}
}

func (p *process) close() {
	for _, f := range p.outputs {
		f.Close()
	}
	if p.stdin != nil {
		p.stdin.Close()
	}
}

// hangup ends a child whose channel went away, like sshd: SIGHUP to its
// process group, SIGKILL after a grace, or at once when Serve is stopping.
// The other processes of its session (a shell's background jobs) get the
// SIGHUP too, as a shell passes it on to its jobs when its terminal hangs
// up: a shell that is slow to act on it and is killed after the grace would
// otherwise leave them running. What was started with nohup ignores it, and
// what left the session with setsid is not in it.
func (p *process) hangup(ctx context.Context) {
	if p.exited() {
		return
	}
	_ = p.signal(syscall.SIGHUP)
	hangupSession(p.pid())
	t := time.NewTimer(hangupGrace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.signal(syscall.SIGKILL)
	case <-ctx.Done():
		_ = p.signal(syscall.SIGKILL)
	}
}

// exitMessage is the request that reports how the child ended: exit-status,
// or exit-signal when a signal killed it (RFC 4254 6.10).
func exitMessage(ps *os.ProcessState) (string, []byte) {
	if ps == nil { // wait4 failed: someone else reaped the child
		return "exit-status", ssh.Marshal(struct{ Status uint32 }{255})
	}
	ws, _ := ps.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return "exit-signal", ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: signalName(ws.Signal()), CoreDumped: ws.CoreDump()})
	}
	return "exit-status", ssh.Marshal(struct{ Status uint32 }{uint32(ws.ExitStatus())})
}

// SSH names signals without "SIG" (RFC 4254 6.10): "INT", "TERM", "USR1".
func signalName(sig syscall.Signal) string {
	return strings.TrimPrefix(unix.SignalName(sig), "SIG")
}

func parseSignal(name string) (syscall.Signal, bool) {
	sig := unix.SignalNum("SIG" + name)
	return sig, sig != 0
}

// liveSessions maps session ids to their processes that are not zombies,
// read from /proc. The bool is false where /proc cannot be read.
func liveSessions() (map[int][]int, bool) {
	dir, err := os.ReadDir("/proc")
	if err != nil {
		return nil, false
	}
	sessions := map[int][]int{}
	for _, e := range dir {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(e.Name()); ok && st.state != 'Z' {
			sessions[st.sid] = append(sessions[st.sid], pid)
		}
	}
	return sessions, true
}

// procStat is what the agent reads of /proc/PID/stat.
type procStat struct {
	state     byte // R, S, D, Z, ...
	ppid, sid int
}

// readStat reads /proc/PID/stat; false if the process is gone or the file
// does not parse.
func readStat(pid string) (procStat, bool) {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return procStat{}, false // gone meanwhile
	}
	// "pid (comm) state ppid pgrp session ..."; comm may hold anything.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 4 || len(f[0]) != 1 {
		return procStat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	sid, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	return procStat{state: f[0][0], ppid: ppid, sid: sid}, true
}

// hangupSession sends SIGHUP to every process of session sid but its
// leader (the agent sees only its own session's processes in a container
// or sandbox, and all of its own user's elsewhere).
func hangupSession(sid int) {
	sessions, _ := liveSessions()
	for _, pid := range sessions[sid] {
		if pid != sid {
			_ = syscall.Kill(pid, syscall.SIGHUP)
		}
	}
}
