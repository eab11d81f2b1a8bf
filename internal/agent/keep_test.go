package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/sdk"
)

// keptClient is one channel attached to a kept shell, its output read
// into out until the channel ends.
type keptClient struct {
	t     *testing.T
	shell *sdk.KeptShell
	out   *syncBuffer
	sent  int           // input bytes written on this channel
	ended chan struct{} // closed when the output has been read to its end
}

func newKeptClient(t *testing.T, shell *sdk.KeptShell) *keptClient {
	c := &keptClient{t: t, shell: shell, out: &syncBuffer{}, ended: make(chan struct{})}
	go func() {
		defer close(c.ended)
		_, _ = io.Copy(c.out, shell)
	}()
	return c
}

// openKept opens a kept shell on cl.
func openKept(t *testing.T, cl *ssh.Client) *keptClient {
	t.Helper()
	shell, err := sdk.OpenKeptShell(cl, "xterm", sdk.TerminalSize{Rows: 24, Columns: 80}, ssh.TerminalModes{ssh.ECHO: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shell.Close() })
	return newKeptClient(t, shell)
}

// resumeKept resumes token on cl from offset.
func resumeKept(t *testing.T, cl *ssh.Client, token string, offset uint64) (*keptClient, sdk.ResumeAnswer) {
	t.Helper()
	shell, answer, err := sdk.ResumeShell(cl, token, offset)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shell.Close() })
	return newKeptClient(t, shell), answer
}

func (c *keptClient) send(s string) {
	c.t.Helper()
	n, err := io.WriteString(c.shell, s)
	c.sent += n
	if err != nil {
		c.t.Fatal(err)
	}
}

// seen waits until the channel's output has ended and returns how much
// there was: the offset a client that reconnects has seen.
func (c *keptClient) seen() uint64 {
	c.t.Helper()
	select {
	case <-c.ended:
	case <-time.After(testTimeout):
		c.t.Fatal("the channel's output did not end")
	}
	return uint64(len(c.out.String()))
}

// keptAgent starts an agent and returns it with the directory its shells
// start in.
func keptAgent(t *testing.T, change func(*Config)) (*testAgent, string) {
	var dir string
	a := startAgent(t, func(c *Config) {
		dir = c.Dir
		if change != nil {
			change(c)
		}
	})
	return a, dir
}

// mkfifo makes a FIFO that a shell's job reads from, so that the test
// decides when the shell prints, while no client is attached.
func mkfifo(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// A kept shell outlives its connection: what it prints while detached is
// replayed from the client's offset, the input count is exact, and the
// resumed channel drives the same shell, window changes included.
func TestKeptShellResumes(t *testing.T) {
	t.Parallel()
	a, dir := keptAgent(t, nil)
	fifo := mkfifo(t, dir, "later")
	cl := a.dial(t)
	first := openKept(t, cl)
	if len(first.shell.Token)*5 < 128 { // base32
		t.Fatalf("token %q holds fewer than 128 bits", first.shell.Token)
	}
	first.send("cat later & echo job=$! shell=$$\n")
	job, shell := waitPID(t, first.out, "job"), waitPID(t, first.out, "shell")

	cl.Close()
	offset := first.seen()
	if first.shell.Wait() != nil {
		t.Fatal("the dropped channel reported an exit")
	}
	// Detached, the shell runs on and its output is kept.
	writeFile(t, fifo, "printed-while-detached\n")
	eventually(t, "the job to print and exit", func() bool { return gone(job) })
	if gone(shell) {
		t.Fatal("the shell was hung up with its connection")
	}

	second, answer := resumeKept(t, a.dial(t), first.shell.Token, offset)
	if answer.InputReceived != uint64(first.sent) || answer.Oldest != 0 {
		t.Fatalf("resume answer = %+v, want %d input bytes received and nothing lost", answer, first.sent)
	}
	out := waitOutput(t, second.out, "printed-while-detached")
	if strings.Contains(out, "job=") {
		t.Fatalf("the replay repeats output the client had seen:\n%q", out)
	}
	second.send("echo again=$$; stty size\n")
	if got := waitPID(t, second.out, "again"); got != shell {
		t.Fatalf("resumed in shell %d, want %d", got, shell)
	}
	waitOutput(t, second.out, "24 80")
	if err := second.shell.WindowChange(sdk.TerminalSize{Rows: 40, Columns: 132}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the resumed pty to take the window change", func() bool {
		second.send("stty size\n")
		return strings.Contains(second.out.String(), "40 132")
	})

	// The exit status goes to the channel attached when the shell ends.
	second.send("exit 7\n")
	exit := second.shell.Wait()
	if exit == nil || exit.Status != 7 {
		t.Fatalf("exit = %+v, want status 7", exit)
	}
	if _, _, err := sdk.ResumeShell(a.dial(t), first.shell.Token, 0); !errors.Is(err, sdk.ErrShellGone) {
		t.Fatalf("resume after the exit was delivered: %v, want ErrShellGone", err)
	}
}

// Input that never reached the agent is not counted: the client resends
// exactly what follows InputReceived.
func TestKeptShellCountsInput(t *testing.T) {
	t.Parallel()
	a, _ := keptAgent(t, nil)
	cl := a.dial(t)
	first := openKept(t, cl)
	first.send("echo one=$$\n")
	shell := waitPID(t, first.out, "one")
	cl.Close()
	offset := first.seen()

	second, answer := resumeKept(t, a.dial(t), first.shell.Token, offset)
	if answer.InputReceived != uint64(first.sent) {
		t.Fatalf("input received = %d, want %d", answer.InputReceived, first.sent)
	}
	second.send("echo two=$$\n")
	if got := waitPID(t, second.out, "two"); got != shell {
		t.Fatalf("second channel in shell %d, want %d", got, shell)
	}
	second.shell.Close() // a client may also leave its shell for later
	offset += second.seen()
	third, answer := resumeKept(t, a.dial(t), first.shell.Token, offset)
	if want := uint64(first.sent + second.sent); answer.InputReceived != want {
		t.Fatalf("input received after two channels = %d, want %d", answer.InputReceived, want)
	}
	third.send("exit\n")
	if exit := third.shell.Wait(); exit == nil || exit.Status != 0 {
		t.Fatalf("exit = %+v", exit)
	}
}

// A second resume takes the shell over: the first channel is closed, and
// only the second one's input reaches the shell.
func TestKeptShellTakeover(t *testing.T) {
	t.Parallel()
	a, _ := keptAgent(t, nil)
	first := openKept(t, a.dial(t))
	first.send("echo first=$$\n")
	shell := waitPID(t, first.out, "first")

	second, answer := resumeKept(t, a.dial(t), first.shell.Token, uint64(len(first.out.String())))
	if exit := first.shell.Wait(); exit != nil {
		t.Fatalf("the channel taken over reported exit %+v", exit)
	}
	if answer.InputReceived != uint64(first.sent) {
		t.Fatalf("input received = %d, want %d", answer.InputReceived, first.sent)
	}
	second.send("echo second=$$\n")
	if got := waitPID(t, second.out, "second"); got != shell {
		t.Fatalf("took over shell %d, want %d", got, shell)
	}
}

// Detached longer than the keep limit, a kept shell is hung up like any
// other, and its token resumes nothing.
func TestKeptShellKeepLimit(t *testing.T) {
	t.Parallel()
	a, _ := keptAgent(t, func(c *Config) { c.KeepLimit = 300 * time.Millisecond })
	cl := a.dial(t)
	k := openKept(t, cl)
	k.send("echo shell=$$\n")
	shell := waitPID(t, k.out, "shell")
	cl.Close()
	eventually(t, "the shell to be hung up after the keep limit", func() bool { return gone(shell) })
	if _, _, err := sdk.ResumeShell(a.dial(t), k.shell.Token, 0); !errors.Is(err, sdk.ErrShellGone) {
		t.Fatalf("resume after the keep limit: %v, want ErrShellGone", err)
	}
}

// Stopping the agent hangs up its detached kept shells.
func TestKeptShellEndsWithServe(t *testing.T) {
	t.Parallel()
	a, _ := keptAgent(t, nil)
	cl := a.dial(t)
	k := openKept(t, cl)
	k.send("echo shell=$$\n")
	shell := waitPID(t, k.out, "shell")
	cl.Close()
	k.seen()
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if !gone(shell) {
		t.Fatal("a kept shell outlived Serve")
	}
}

// Detached, the shell never waits for a client: the kept output is
// bounded, the replay starts at the oldest byte kept, and the answer says
// what was lost.
func TestKeptShellOutputBounded(t *testing.T) {
	t.Parallel()
	const kept = 4096
	a, dir := keptAgent(t, func(c *Config) { c.keptOutput = kept })
	fifo := mkfifo(t, dir, "go")
	cl := a.dial(t)
	k := openKept(t, cl)
	// 200 KB of output once detached, then a marker.
	k.send("cat go >/dev/null; head -c 200000 /dev/zero | tr '\\0' x; echo; echo do''ne=$$; : >finished\n")
	eventually(t, "the command line's echo", func() bool { return strings.Contains(k.out.String(), "head -c") })
	cl.Close()
	offset := k.seen()
	writeFile(t, fifo, "go\n")
	eventually(t, "the output to be written while detached", func() bool {
		_, err := os.Stat(filepath.Join(dir, "finished"))
		return err == nil
	})

	r, answer := resumeKept(t, a.dial(t), k.shell.Token, offset)
	if answer.Oldest <= offset {
		t.Fatalf("oldest offset kept = %d after 200 KB, want past the client's %d", answer.Oldest, offset)
	}
	waitPID(t, r.out, "done")
	r.send("echo mo''re\n")
	waitOutput(t, r.out, "more")
	// The replay is at most what the ring holds: the marker's line and
	// the x's before it, nothing older.
	replay, _, _ := strings.Cut(r.out.String(), "done=")
	if len(replay) > kept || !strings.HasSuffix(strings.TrimRight(replay, "\r\n"), "xxxxxxxx") {
		t.Fatalf("replay of %d bytes (ring %d): %q…", len(replay), kept, replay[:min(len(replay), 80)])
	}
}

// A client that does not ask to keep its shell (OpenSSH) gets ssh's
// semantics: the shell is hung up with its connection. A keep request
// needs a pty, and a wrong token resumes nothing.
func TestKeepRefusals(t *testing.T) {
	t.Parallel()
	a, _ := keptAgent(t, nil)
	cl := a.dial(t)

	ch, _, err := cl.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := ch.SendRequest(sdk.KeepRequest, true, nil); err != nil || ok {
		t.Fatalf("keep without a pty: ok=%v err=%v, want refused", ok, err)
	}
	ch.Close()

	k := openKept(t, cl)
	k.send("echo shell=$$\n")
	shell := waitPID(t, k.out, "shell")
	for _, token := range []string{"", "x", strings.Repeat("A", len(k.shell.Token)), k.shell.Token + "A"} {
		if _, _, err := sdk.ResumeShell(cl, token, 0); !errors.Is(err, sdk.ErrShellGone) {
			t.Fatalf("resume with token %q: %v, want ErrShellGone", token, err)
		}
	}
	k.send("echo still=$$\n")
	if got := waitPID(t, k.out, "still"); got != shell {
		t.Fatalf("after the refused guesses: shell %d, want %d", got, shell)
	}

	_, in, out := startShell(t, cl, 24, 80)
	fmt.Fprint(in, "echo plain=$$\n")
	plain := waitPID(t, out, "plain")
	cl.Close()
	eventually(t, "the shell that was not kept to be hung up", func() bool { return gone(plain) })
	if gone(shell) {
		t.Fatal("the kept shell was hung up with its connection")
	}
}

// At most maxKeptShells per agent: past it, keep is refused and the
// client gets a shell that is not kept.
func TestKeptShellsBounded(t *testing.T) {
	t.Parallel()
	a, _ := keptAgent(t, nil)
	cl := a.dial(t)
	keep := func() bool {
		ch, _, err := cl.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ch.Close() })
		pty := ssh.Marshal(struct {
			Term                         string
			Columns, Rows, Width, Height uint32
			Modes                        string
		}{"xterm", 80, 24, 0, 0, "\x00"})
		if ok, err := ch.SendRequest("pty-req", true, pty); err != nil || !ok {
			t.Fatalf("pty-req: %v %v", ok, err)
		}
		ok, err := ch.SendRequest(sdk.KeepRequest, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for i := range maxKeptShells {
		if !keep() {
			t.Fatalf("keep %d refused", i+1)
		}
	}
	if keep() {
		t.Fatalf("keep %d accepted", maxKeptShells+1)
	}
}

func TestOutputRing(t *testing.T) {
	t.Parallel()
	r := outputRing{size: 8}
	read := func(off uint64) string {
		var b bytes.Buffer
		for off < r.end {
			p := make([]byte, 3)
			n := r.readAt(p, off)
			if n == 0 {
				t.Fatalf("readAt(%d) read nothing before the end %d", off, r.end)
			}
			b.Write(p[:n])
			off += uint64(n)
		}
		return b.String()
	}
	r.write([]byte("abc"))
	if r.oldest() != 0 || r.end != 3 || read(0) != "abc" || read(1) != "bc" {
		t.Fatalf("after abc: oldest %d end %d read %q", r.oldest(), r.end, read(0))
	}
	r.write([]byte("defghij"))
	if r.oldest() != 2 || r.end != 10 || read(2) != "cdefghij" || read(7) != "hij" {
		t.Fatalf("after wrapping: oldest %d end %d read %q", r.oldest(), r.end, read(r.oldest()))
	}
	r.write([]byte("0123456789ABCDEFGHIJ")) // more than the ring at once
	if r.oldest() != 22 || r.end != 30 || read(22) != "CDEFGHIJ" || len(r.buf) != 8 {
		t.Fatalf("after a long write: oldest %d end %d read %q", r.oldest(), r.end, read(r.oldest()))
	}
}
