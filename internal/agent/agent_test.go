package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// testTimeout bounds anything a test waits for; generous, because -race
	// on two busy cores is slow, and passing tests never wait for it.
	testTimeout  = 30 * time.Second
	pollInterval = 10 * time.Millisecond
	testSecret   = "s3cret"
)

// TestMain fails the run if goroutines of this package outlive the tests:
// every Serve has returned by then, and must have left nothing behind.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func leakedGoroutines() string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "devgpu/internal/agent.") && !strings.Contains(g, "agent.TestMain") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(pollInterval)
	}
}

type testAgent struct {
	sock   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Serve's result, once done is closed
}

// startAgent runs Serve on a unix socket with a quiet, predictable
// environment; change lets a test adjust the Config.
func startAgent(t testing.TB, change func(*Config)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		Secret: testSecret,
		Dir:    dir,
		Shell:  "/bin/bash",
		Env:    []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "LANG=C"},
	}
	if _, err := os.Stat(cfg.Shell); err != nil {
		cfg.Shell = "sh"
	}
	if change != nil {
		change(&cfg)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &testAgent{sock: ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.err = Serve(ctx, ln, cfg)
	}()
	t.Cleanup(func() {
		if err := a.stop(t); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return a
}

// stop cancels Serve and returns its result.
func (a *testAgent) stop(t testing.TB) error {
	t.Helper()
	a.cancel()
	select {
	case <-a.done:
		return a.err
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return")
		return nil
	}
}

// exits waits for Serve to return by itself (why: what should make it)
// and checks it returned nil.
func (a *testAgent) exits(t testing.TB, why string) {
	t.Helper()
	select {
	case <-a.done:
		if a.err != nil {
			t.Errorf("Serve: %v", a.err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("Serve did not exit %s", why)
	}
}

// dialSecret opens an SSH connection that presents secret.
func (a *testAgent) dialSecret(secret string) (*ssh.Client, error) {
	c, err := net.DialTimeout("unix", a.sock, testTimeout)
	if err != nil {
		return nil, err
	}
	if err := WritePreamble(c, secret); err != nil {
		c.Close()
		return nil, err
	}
	sc, chans, reqs, err := ssh.NewClientConn(c, "agent", &ssh.ClientConfig{
		User:            "dev",
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         testTimeout,
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

func (a *testAgent) dial(t testing.TB) *ssh.Client {
	t.Helper()
	cl, err := a.dialSecret(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func newSession(t *testing.T, cl *ssh.Client) *ssh.Session {
	t.Helper()
	s, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// syncBuffer collects output that a test polls while it grows.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(pollInterval)
	}
}

// waitOutput waits until out contains want and returns out's text.
func waitOutput(t *testing.T, out *syncBuffer, want string) string {
	t.Helper()
	eventually(t, fmt.Sprintf("%q in output", want), func() bool { return strings.Contains(out.String(), want) })
	return out.String()
}

// waitPID waits for "name=PID" in out and returns PID. Tests print it as
// "name=$!" or "name=$$", so a terminal's echo of the input does not match.
func waitPID(t *testing.T, out *syncBuffer, name string) int {
	t.Helper()
	re := regexp.MustCompile(name + `=(\d+)`)
	var pid int
	eventually(t, name+" pid in output", func() bool {
		m := re.FindStringSubmatch(out.String())
		if m != nil {
			pid, _ = strconv.Atoi(m[1])
		}
		return m != nil
	})
	return pid
}

// gone reports whether pid has exited; a zombie counts, since its reaper
// (init, not the agent) may be slow.
func gone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func exitError(t *testing.T, err error) *ssh.ExitError {
	t.Helper()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("want *ssh.ExitError, got %T %v", err, err)
	}
	return ee
}

func skipIfIgnored(t *testing.T, sig os.Signal) {
	if signal.Ignored(sig) {
		t.Skipf("%v is ignored by the test process, and so by its children", sig)
	}
}

func TestExec(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	s := newSession(t, a.dial(t))
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	err := s.Run("echo out; echo err >&2; pwd; exit 3")
	if got := exitError(t, err).ExitStatus(); got != 3 {
		t.Errorf("exit status %d, want 3", got)
	}
	dir := filepath.Dir(a.sock)
	if got, want := stdout.String(), "out\n"+dir+"\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	if got := stderr.String(); got != "err\n" {
		t.Errorf("stderr %q, want %q", got, "err\n")
	}
}

func TestExecStdin(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	s := newSession(t, a.dial(t))
	s.Stdin = strings.NewReader("hello\nworld\n")
	out, err := s.Output("wc -l; echo done")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); len(got) != 2 || got[0] != "2" || got[1] != "done" {
		t.Errorf("output %q, want 2 lines counted then done", out)
	}
}

func TestExecBulkOutput(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	s := newSession(t, a.dial(t))
	const size = 8 << 20
	out, err := s.Output(fmt.Sprintf("head -c %d /dev/zero", size))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != size || bytes.IndexByte(out, 1) >= 0 {
		t.Errorf("got %d bytes, want %d zero bytes", len(out), size)
	}
}

func TestStartFailure(t *testing.T) {
	t.Parallel()
	a := startAgent(t, func(c *Config) { c.Dir = "/nonexistent" })
	err := newSession(t, a.dial(t)).Run("true")
	var ee *ssh.ExitError
	if err == nil || errors.As(err, &ee) {
		t.Fatalf("Run: %v, want the exec request refused", err)
	}
}

func TestExitSignal(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	s := newSession(t, a.dial(t))
	ee := exitError(t, s.Run("kill -TERM $$"))
	if ee.Signal() != "TERM" {
		t.Errorf("exit signal %q (status %d), want TERM", ee.Signal(), ee.ExitStatus())
	}
}

func TestEnv(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	s := newSession(t, a.dial(t))
	if err := s.Setenv("DEVGPU_TEST", "a b=c"); err != nil {
		t.Fatal(err)
	}
	out, err := s.Output(`printf %s "$DEVGPU_TEST"; printf /%s "$HOME"`)
	if err != nil {
		t.Fatal(err)
	}
	if want := "a b=c/" + filepath.Dir(a.sock); string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

// startShell opens an interactive shell on a rows×cols pty.
func startShell(t *testing.T, cl *ssh.Client, rows, cols int) (*ssh.Session, io.Writer, *syncBuffer) {
	t.Helper()
	s := newSession(t, cl)
	if err := s.RequestPty("xterm-256color", rows, cols, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
		t.Fatal(err)
	}
	in, err := s.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	s.Stdout = out
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	return s, in, out
}

// TestChildSignals checks that children start with every signal at its
// default even when the agent's process ignores some, as `devgpu agent`
// does with SIGHUP. SIGUSR2 stands in, as no other test uses it.
func TestChildSignals(t *testing.T) {
	t.Parallel()
	signal.Ignore(syscall.SIGUSR2)
	a := startAgent(t, nil)
	out, err := newSession(t, a.dial(t)).Output("grep SigIgn /proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	// Only the 31 standard signals: a test runner may ignore realtime ones
	// (glibc's SIGCANCEL, 32), which no shell relies on.
	f := strings.Fields(string(out))
	mask, err := strconv.ParseUint(f[len(f)-1], 16, 64)
	if len(f) != 2 || err != nil || mask&0x7fffffff != 0 {
		t.Errorf("child ignores signals: %q", out)
	}
}

func TestPTYSize(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	s, in, out := startShell(t, a.dial(t), 40, 120)
	fmt.Fprint(in, "echo term=$TERM; stty size\n")
	waitOutput(t, out, "term=xterm-256color")
	waitOutput(t, out, "40 120")
	if err := s.WindowChange(50, 132); err != nil {
		t.Fatal(err)
	}
	// The resize (a request) and the keystrokes (data) travel apart, so the
	// shell may run stty before the resize lands: ask until it shows.
	next := time.Now()
	eventually(t, `"50 132" in output`, func() bool {
		if time.Now().After(next) {
			fmt.Fprint(in, "stty size\n")
			next = time.Now().Add(500 * time.Millisecond)
		}
		return strings.Contains(out.String(), "50 132")
	})
	fmt.Fprint(in, "exit\n")
	if err := s.Wait(); err != nil {
		t.Errorf("shell exit: %v", err)
	}
}

func TestPTYInterrupt(t *testing.T) {
	t.Parallel()
	skipIfIgnored(t, syscall.SIGINT)
	a := startAgent(t, nil)
	s, in, out := startShell(t, a.dial(t), 24, 80)
	pidFile := filepath.Join(t.TempDir(), "pid")
	fmt.Fprintf(in, "sh -c 'echo $$ >%s; exec sleep 100'\n", pidFile)
	var pid int
	eventually(t, "sleep to run", func() bool {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return pid > 0 && string(comm) == "sleep\n"
	})
	fmt.Fprint(in, "\x03")
	eventually(t, "sleep to die of ^C", func() bool { return gone(pid) })
	fmt.Fprint(in, "echo alive-$((6*7))\n")
	waitOutput(t, out, "alive-42")
	fmt.Fprint(in, "exit 7\n")
	if got := exitError(t, s.Wait()).ExitStatus(); got != 7 {
		t.Errorf("exit status %d, want 7", got)
	}
}

func TestSignalRequest(t *testing.T) {
	t.Parallel()
	skipIfIgnored(t, syscall.SIGINT)
	a := startAgent(t, nil)
	s := newSession(t, a.dial(t))
	// Start returns once the agent replied, which it does after starting
	// the child, so the signal cannot come too early.
	if err := s.Start("sleep 100"); err != nil {
		t.Fatal(err)
	}
	if err := s.Signal(ssh.SIGINT); err != nil {
		t.Fatal(err)
	}
	if ee := exitError(t, s.Wait()); ee.Signal() != "INT" {
		t.Errorf("exit signal %q (status %d), want INT", ee.Signal(), ee.ExitStatus())
	}
}

func TestWrongSecret(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	if cl, err := a.dialSecret("wrong"); err == nil {
		cl.Close()
		t.Fatal("connection with a wrong secret was accepted")
	}
	if out, err := newSession(t, a.dial(t)).Output("echo ok"); err != nil || string(out) != "ok\n" {
		t.Errorf("after a refusal: %q, %v", out, err)
	}
}

func TestUnsupported(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	cl := a.dial(t)
	_, _, err := cl.OpenChannel("x11", nil)
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.UnknownChannelType {
		t.Errorf("x11: %v, want unknown channel type", err)
	}
	if err := newSession(t, cl).RequestSubsystem("netconf"); err == nil {
		t.Error("netconf subsystem accepted")
	}
	if ok, err := newSession(t, cl).SendRequest("x11-req", true, nil); ok || err != nil {
		t.Errorf("x11-req: %v, %v; want refused", ok, err)
	}
	// ssh -R: nothing outside may reach into the session but the tunnel.
	if _, err := cl.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("tcpip-forward accepted")
	}
}

func TestHangup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, cmd string }{
		{"hup", "echo pid=$$; exec sleep 1000"},
		{"hup-ignored", "trap '' HUP; echo pid=$$; exec sleep 1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := startAgent(t, nil)
			cl := a.dial(t)
			s := newSession(t, cl)
			out := &syncBuffer{}
			s.Stdout = out
			if err := s.Start(tc.cmd); err != nil {
				t.Fatal(err)
			}
			pid := waitPID(t, out, "pid")
			cl.Close()
			eventually(t, "sleep to die of the hangup", func() bool { return gone(pid) })
		})
	}
}

// A hangup reaches a shell's background jobs even when the shell does not
// pass it on (here it ignores SIGHUP, and is killed after the grace): as
// a terminal's hangup would through a shell that acts on it.
func TestHangupReachesBackgroundJobs(t *testing.T) {
	t.Parallel()
	skipIfIgnored(t, syscall.SIGHUP)
	a := startAgent(t, nil)
	cl := a.dial(t)
	_, in, out := startShell(t, cl, 24, 80)
	// The job starts before the trap, so it keeps SIGHUP's default.
	fmt.Fprint(in, "sleep 1003 & echo job=$!; trap '' HUP; echo shell=$$\n")
	job, shell := waitPID(t, out, "job"), waitPID(t, out, "shell")
	// Until the job has become sleep, it is a copy of the shell whose
	// SIGHUP handler would take the hangup and then lose it at the exec.
	eventually(t, "the job to exec sleep", func() bool {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", job))
		return err == nil && string(comm) == "sleep\n"
	})
	cl.Close()
	eventually(t, "the background job to die of the hangup", func() bool { return gone(job) })
	eventually(t, "the shell to be killed after the grace", func() bool { return gone(shell) })
}

func TestIdleExit(t *testing.T) {
	t.Parallel()
	const idle = 200 * time.Millisecond
	a := startAgent(t, func(c *Config) { c.IdleExit = idle })
	cl := a.dial(t)
	select {
	case <-a.done:
		t.Fatalf("Serve returned with a connection open: %v", a.err)
	case <-time.After(5 * idle):
	}
	cl.Close()
	a.exits(t, "when idle")
}

// TestCancelKills checks that stopping Serve kills what its sessions
// started: the command, a background job in its process group, and a job
// that an interactive shell put in a process group of its own. (A process
// that calls setsid leaves the session; the runtime's Stop ends those.)
func TestCancelKills(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	cl := a.dial(t)

	s := newSession(t, cl)
	out := &syncBuffer{}
	s.Stdout = out
	if err := s.Start("sleep 1000 & echo bg=$!; echo fg=$$; exec sleep 1000"); err != nil {
		t.Fatal(err)
	}
	_, in, tty := startShell(t, cl, 24, 80)
	fmt.Fprint(in, "sleep 1000 & echo job=$!; echo sh=$$\n")
	pids := []int{waitPID(t, out, "bg"), waitPID(t, out, "fg"), waitPID(t, tty, "job"), waitPID(t, tty, "sh")}

	if err := a.stop(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for _, pid := range pids {
		if !gone(pid) {
			t.Errorf("pid %d still runs after Serve returned", pid)
		}
	}
}

// control opens the control plane's connection to a.
func (a *testAgent) control(t *testing.T) *Control {
	t.Helper()
	c, err := net.DialTimeout("unix", a.sock, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := DialControl(c, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	return ctl
}

func lastActivity(t *testing.T, ctl *Control) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	at, err := ctl.LastActivity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

func notice(t *testing.T, ctl *Control, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ctl.Notice(ctx, msg); err != nil {
		t.Fatal(err)
	}
}

// TestActivity checks that input and output are activity, and that protocol
// traffic (channels, requests, keepalives) and notices are not.
func TestActivity(t *testing.T) {
	t.Parallel()
	begin := time.Now()
	a := startAgent(t, nil)
	ctl := a.control(t)
	at := lastActivity(t, ctl)
	if at.Before(begin) || at.After(time.Now()) {
		t.Fatalf("initial activity %v, want when Serve started (after %v)", at, begin)
	}
	unchanged := func(what string) {
		t.Helper()
		if got := lastActivity(t, ctl); !got.Equal(at) {
			t.Errorf("%s moved the activity from %v to %v", what, at, got)
		}
	}
	dir := t.TempDir()
	cl := a.dial(t)

	// A command that only reads: input without output.
	reader := newSession(t, cl)
	stdin, err := reader.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	reader.Stderr = stderr
	file := filepath.Join(dir, "in")
	if err := reader.Start("cat >" + file); err != nil {
		t.Fatal(err)
	}
	unchanged("a session and an exec")
	if ok, _, err := cl.SendRequest("keepalive@openssh.com", true, nil); ok || err != nil {
		t.Errorf("keepalive: %v, %v; want refused", ok, err)
	}
	unchanged("a keepalive")
	notice(t, ctl, "not activity")
	waitOutput(t, stderr, "[devgpu] not activity\n")
	unchanged("a notice")

	fmt.Fprint(stdin, "typed\n")
	eventually(t, "input to reach the command", func() bool {
		b, _ := os.ReadFile(file)
		return string(b) == "typed\n"
	})
	input := lastActivity(t, ctl)
	if !input.After(at) {
		t.Fatalf("input: activity %v, not after %v", input, at)
	}
	at = input

	// A command that only writes, when the test says so: output without input.
	writer := newSession(t, cl)
	stdout := &syncBuffer{}
	writer.Stdout = stdout
	flag := filepath.Join(dir, "go")
	if err := writer.Start(fmt.Sprintf("while [ ! -e %s ]; do sleep 0.01; done; echo out", flag)); err != nil {
		t.Fatal(err)
	}
	unchanged("another exec")
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writer.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := stdout.String(); got != "out\n" {
		t.Fatalf("output %q", got)
	}
	output := lastActivity(t, ctl)
	if !output.After(at) {
		t.Fatalf("output: activity %v, not after %v", output, at)
	}
	at = output
	if ok, _, err := cl.SendRequest("keepalive@openssh.com", true, nil); ok || err != nil {
		t.Errorf("keepalive: %v, %v; want refused", ok, err)
	}
	notice(t, ctl, "still not activity")
	waitOutput(t, stderr, "[devgpu] still not activity\n")
	unchanged("a keepalive and a notice")
}

// TestNotice checks that a notice reaches the shells and commands of every
// connection: a line of its own on a terminal, else stderr.
func TestNotice(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	_, in, tty := startShell(t, a.dial(t), 24, 80)
	cl := a.dial(t)
	s := newSession(t, cl)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	s.Stdout, s.Stderr = stdout, stderr
	if err := s.Start("sleep 1000"); err != nil {
		t.Fatal(err)
	}
	// A finished command gets none, and is no obstacle.
	if err := newSession(t, cl).Run("true"); err != nil {
		t.Fatal(err)
	}

	const msg = "idle for 25m: this session ends in 5m"
	notice(t, ctl, msg)
	waitOutput(t, tty, "\r\n[devgpu] "+msg+"\r\n")
	waitOutput(t, stderr, "[devgpu] "+msg+"\n")
	if got := stderr.String(); got != "[devgpu] "+msg+"\n" {
		t.Errorf("stderr %q", got)
	}
	if got := stdout.String(); got != "" {
		t.Errorf("stdout %q, want nothing", got)
	}
	// The terminal still works.
	fmt.Fprint(in, "echo alive-$((6*7))\n")
	waitOutput(t, tty, "alive-42")

	// Other global requests are still refused.
	for _, name := range []string{"keepalive@openssh.com", "tcpip-forward", "other@devgpu"} {
		if ok, _, err := cl.SendRequest(name, true, nil); ok || err != nil {
			t.Errorf("%s: %v, %v; want refused", name, ok, err)
		}
	}
}

// TestNoticeDuringOutput checks that notices and the child's output to the
// same stream do not mix: each notice is a line of its own.
func TestNoticeDuringOutput(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	s := newSession(t, a.dial(t))
	stderr := &syncBuffer{}
	s.Stderr = stderr
	flag := filepath.Join(t.TempDir(), "stop")
	if err := s.Start(fmt.Sprintf("while [ ! -e %s ]; do echo err; done >&2", flag)); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, stderr, "err\n")
	for i := range 20 {
		notice(t, ctl, fmt.Sprintf("n%d", i))
	}
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(); err != nil {
		t.Fatal(err)
	}
	notices := 0
	for line := range strings.Lines(stderr.String()) {
		switch {
		case line == "err\n":
		case line == fmt.Sprintf("[devgpu] n%d\n", notices):
			notices++
		default:
			t.Fatalf("line %q in stderr", line)
		}
	}
	if notices != 20 {
		t.Errorf("%d notices in stderr, want 20", notices)
	}
}

// TestNoticeStalledClient checks that a client that does not read delays
// neither a notice to the others nor the control plane for long.
func TestNoticeStalledClient(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	_, _, tty := startShell(t, a.dial(t), 24, 80)

	// A command whose output fills the channel's window, on a channel that
	// nobody reads.
	ch, reqs, err := a.dial(t).OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	if ok, err := ch.SendRequest("exec", true, ssh.Marshal(struct{ Command string }{"head -c 16000000 /dev/zero"})); !ok || err != nil {
		t.Fatalf("exec: %v, %v", ok, err)
	}
	// Stalled once the output stopped moving for a while.
	prev := lastActivity(t, ctl)
	eventually(t, "the output to stall", func() bool {
		time.Sleep(300 * time.Millisecond)
		at := lastActivity(t, ctl)
		stalled := at.Equal(prev)
		prev = at
		return stalled
	})

	for i := range 3 {
		begin := time.Now()
		msg := fmt.Sprintf("notice %d", i)
		notice(t, ctl, msg)
		if d := time.Since(begin); d > noticeTimeout+5*time.Second {
			t.Errorf("notice %d took %v", i, d)
		}
		waitOutput(t, tty, "[devgpu] "+msg+"\r\n")
	}
	if got := lastActivity(t, ctl); !got.Equal(prev) {
		t.Errorf("activity moved from %v to %v", prev, got)
	}
}

// TestControl checks the control connection's failures: a wrong secret, and
// a context that ends.
func TestControl(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	c, err := net.DialTimeout("unix", a.sock, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if ctl, err := DialControl(c, "wrong"); err == nil {
		ctl.Close()
		t.Fatal("control connection with a wrong secret was accepted")
	}

	ctl := a.control(t)
	lastActivity(t, ctl)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ctl.LastActivity(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("LastActivity with a cancelled context: %v", err)
	}
	// That closed the connection.
	if err := ctl.Notice(context.Background(), "x"); err == nil {
		t.Error("Notice works after a cancelled request")
	}
}

// SetEnv changes the environment of later commands, not of running ones.
func TestSetEnv(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	cl := a.dial(t)
	if out, _ := newSession(t, cl).Output("echo ${DEVGPU_USER:-unset}"); string(out) != "unset\n" {
		t.Fatalf("before SetEnv: %q", out)
	}
	if err := ctl.SetEnv(context.Background(), "DEVGPU_USER", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := ctl.SetEnv(context.Background(), "DEVGPU_USER", "bob"); err != nil {
		t.Fatal(err)
	}
	if out, _ := newSession(t, cl).Output("env | grep -c ^DEVGPU_USER=; echo $DEVGPU_USER"); string(out) != "1\nbob\n" {
		t.Fatalf("after SetEnv: %q", out)
	}
	if err := ctl.SetEnv(context.Background(), "A=B", "x"); err == nil {
		t.Fatal("a name with '=' was accepted")
	}
}

// BenchmarkExecTrue measures a whole connection: dial, preamble, SSH
// handshake, exec, exit status.
func BenchmarkExecTrue(b *testing.B) {
	a := startAgent(b, nil)
	for b.Loop() {
		cl, err := a.dialSecret(testSecret)
		if err != nil {
			b.Fatal(err)
		}
		s, err := cl.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Run("true"); err != nil {
			b.Fatal(err)
		}
		cl.Close()
	}
}

// BenchmarkExecThroughput measures bulk output, as `devgpu run -- head -c
// 1G /dev/zero` does against OpenSSH.
func BenchmarkExecThroughput(b *testing.B) {
	const size = 64 << 20
	a := startAgent(b, nil)
	cl := a.dial(b)
	b.SetBytes(size)
	for b.Loop() {
		s, err := cl.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		s.Stdout = io.Discard
		if err := s.Run(fmt.Sprintf("head -c %d /dev/zero", size)); err != nil {
			b.Fatal(err)
		}
	}
}
