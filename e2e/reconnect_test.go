package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// `devgpu shell` survives a dropped connection: with a proxy the test
// controls between the CLI and the server, every connection is cut and new
// ones are refused for a while. The CLI keeps the terminal, says it is
// reconnecting, and once the network is back resumes the same shell: a
// command typed before the cut has its output, one typed during the cut
// runs in the same shell, and the session kept its one attachment and was
// never ended.
func TestShellSurvivesDroppedConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	proxy := testutil.NewProxy(t, e.addr)
	tm := e.terminalEnv([]string{"DEVGPU_URL=http://" + proxy.Addr}, "shell")
	id := tm.sessionID()
	tm.send("echo shell=$$\r")
	shell := tm.number(`shell=(\d+)`)

	// The command's output comes while the connection is cut: its sleep
	// (unique, to be found on the host) ends during the cut.
	secs := "1." + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	tm.send("sleep " + secs + "; echo before-cut-$((6*7))\r")
	tm.expect("before-cut-$((6*7))") // its echo: the shell has it
	testutil.Eventually(t, testutil.WaitShort, "sleep "+secs+" to run", func() bool {
		return len(testutil.ProcessesWith("sleep\x00"+secs+"\x00")) == 1
	})
	proxy.Cut()
	tm.expect("reconnecting to session " + id)
	tm.send("echo during-cut=$$\r")
	testutil.Eventually(t, testutil.WaitShort, "sleep "+secs+" to end during the cut", func() bool {
		return len(testutil.ProcessesWith("sleep\x00"+secs+"\x00")) == 0
	})
	if s := e.session(id); s.State != sdk.StateRunning || s.EndedAt != nil {
		t.Fatalf("session during the cut = %+v, want running within its grace", s)
	}

	// timing: the figure reported, from restore to the resumed shell
	restored := time.Now()
	proxy.Restore()
	tm.expect("before-cut-42")
	if got := tm.number(`during-cut=(\d+)`); got != shell {
		t.Fatalf("the command typed during the cut ran in shell %d, want %d", got, shell)
	}
	// timing: reported, not asserted
	t.Logf("restore to the resumed shell's output: %s", time.Since(restored))

	s := e.session(id)
	if s.State != sdk.StateRunning || s.Attachments != 1 || s.EndedAt != nil {
		t.Fatalf("session after the resume = %+v, want running with one attachment", s)
	}
	tm.send("exit 5\r")
	if code := tm.wait(); code != 5 {
		t.Fatalf("devgpu shell exited %d, want 5; it shows:\n%s", code, tm.output())
	}
	s = e.waitSession(id, testutil.WaitShort, "to end", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonClosed {
		t.Fatalf("session ended %q, want closed", s.EndReason)
	}
}

// number waits for pattern, whose group is a number, in the output that
// follows the last match, consumes the output up to its end, and returns
// the number.
func (tm *term) number(pattern string) int {
	tm.t.Helper()
	re := regexp.MustCompile(pattern)
	end := tm.await("terminal to show "+pattern, func(out string) int {
		if m := re.FindStringSubmatchIndex(out); m != nil {
			return m[1]
		}
		return -1
	})
	tm.mu.Lock()
	defer tm.mu.Unlock()
	out := tm.buf.String()[tm.seen:]
	if end < 0 {
		tm.t.Fatalf("terminal closed without showing %s; it shows:\n%s", pattern, out)
	}
	m := re.FindStringSubmatch(out[:end])
	tm.seen += end
	n, _ := strconv.Atoi(m[1])
	return n
}

// A shell whose session is stopped while the connection is cut gives up at
// its first attempt once the network is back, and says why in one line.
func TestShellReconnectGivesUpWhenSessionEnded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	proxy := testutil.NewProxy(t, e.addr)
	tm := e.terminalEnv([]string{"DEVGPU_URL=http://" + proxy.Addr}, "shell")
	id := tm.sessionID()
	tm.ready()
	proxy.Cut()
	tm.expect("reconnecting to session " + id)
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop: %+v", r)
	}
	proxy.Restore()
	tm.expect("devgpu: session " + id + " ended: stopped by its owner")
	if code := tm.wait(); code != 255 {
		t.Fatalf("devgpu shell exited %d, want 255; it shows:\n%s", code, tm.output())
	}
}

// Cut for longer than the detach grace, the shell gives up with the
// session's id, and the session ends as detached.
func TestShellReconnectGivesUpAfterGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.admin("project", "update", "default", "--detach-grace", "2s")
	proxy := testutil.NewProxy(t, e.addr)
	tm := e.terminalEnv([]string{"DEVGPU_URL=http://" + proxy.Addr}, "shell")
	id := tm.sessionID()
	tm.ready()
	proxy.Cut()
	tm.expect("reconnecting to session " + id)
	tm.expect("devgpu: lost the connection to session " + id + " and could not reconnect within 2s; the server does not answer; if the session still runs, reattach with devgpu shell --attach " + id)
	if code := tm.wait(); code != 255 {
		t.Fatalf("devgpu shell exited %d, want 255; it shows:\n%s", code, tm.output())
	}
	s := e.waitSession(id, testutil.WaitMedium, "to end as detached", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonDetached {
		t.Fatalf("session ended %q, want detached", s.EndReason)
	}
}
