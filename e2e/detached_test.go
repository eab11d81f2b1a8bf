package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// Detached runs (issue 16): `devgpu run --detach` starts a command that
// needs no client, `devgpu logs` prints or follows what it printed, kept
// in the server's store, and `devgpu wait` passes its exit status on.

// runDetached runs `devgpu run --detach` with args (flags, then -- and the
// command), checks that it returned at once with the new session's id on
// stdout, and returns that id.
func (e *env) runDetached(args ...string) string {
	e.t.Helper()
	before := map[string]bool{}
	for _, s := range e.sessions() {
		before[s.ID] = true
	}
	r := e.cli(append([]string{"run", "--detach"}, args...)...)
	if r.code != 0 {
		e.t.Fatalf("devgpu run --detach %s: %+v", strings.Join(args, " "), r)
	}
	var id string
	for _, s := range e.sessions() {
		if !before[s.ID] {
			if id != "" {
				e.t.Fatalf("devgpu run --detach made two sessions, %s and %s", id, s.ID)
			}
			id = s.ID
		}
	}
	if id == "" || !strings.Contains(r.stdout, id) {
		e.t.Fatalf("devgpu run --detach printed %+v; want the id of the session it made (%q)", r, id)
	}
	if s := e.session(id); !s.Detached() {
		e.t.Fatalf("session %s made by run --detach has no command: %+v", id, s)
	}
	return id
}

// waitEnded waits until a session has ended and returns it.
func (e *env) waitEnded(id string) sdk.Session {
	e.t.Helper()
	return e.waitSession(id, testutil.WaitLong, "to end", func(s sdk.Session) bool { return !s.Active() })
}

// wantCompleted fails the test unless the detached run s ended because its
// command exited with status code.
func wantCompleted(t *testing.T, s sdk.Session, code int) {
	t.Helper()
	if s.State != sdk.StateEnded || s.EndReason != sdk.ReasonCompleted || s.ExitStatus == nil || *s.ExitStatus != code {
		t.Fatalf("session %s: state %s, end reason %q, exit status %v; want ended, completed, exit status %d", s.ID, s.State, s.EndReason, exitText(s), code)
	}
}

func exitText(s sdk.Session) string {
	if s.ExitStatus == nil {
		return "none"
	}
	return strconv.Itoa(*s.ExitStatus) + " " + s.ExitSignal
}

// localHome is where a session of the local runtime has its HOME, on the
// host: the tests open gates there that a job waits for.
func (e *env) localHome(id string) string {
	return filepath.Join(e.dir, "data", "sessions", id, "home")
}

// openGate creates the file a job waits for (see gated).
func (e *env) openGate(id, name string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.localHome(id), name), nil, 0o644); err != nil {
		e.t.Fatalf("open the job's gate: %v", err)
	}
}

// gated is a shell command that waits until the file $HOME/name exists.
func gated(name string) string {
	return `while [ ! -e "$HOME/` + name + `" ]; do sleep 0.1; done`
}

// counter is a job that prints line-1 to line-n, one every 100 ms, and
// stops after line-pause until the file $HOME/go exists.
func counter(n, pause int) string {
	return fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo line-$i; if [ $i -eq %d ]; then %s; fi; i=$((i+1)); sleep 0.1; done`, n, pause, gated("go"))
}

// counted is what counter(n, _) prints.
func counted(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line-%d\n", i)
	}
	return b.String()
}

// pausedAt is the last line counter prints before its gate.
func pausedAt(pause int) string { return fmt.Sprintf("line-%d\n", pause) }

// wantCounted fails the test unless out, what a `logs` printed on
// stdout, is line-1 to line-n once each.
func wantCounted(t *testing.T, what, out string, n int) {
	t.Helper()
	if out != counted(n) {
		t.Fatalf("%s printed:\n%s\nwant line-1 to line-%d, once each", what, out, n)
	}
}

// wantLogged fails the test unless `logs` prints counter's n lines and
// nothing on stderr (no gap).
func (e *env) wantLogged(id string, n int, when string) {
	e.t.Helper()
	r := e.cli("logs", id)
	if r.code != 0 || r.stderr != "" {
		e.t.Fatalf("logs %s: %+v", when, r)
	}
	wantCounted(e.t, "logs "+when, r.stdout, n)
}

// awaitLogged waits until the server's log of run id holds text.
func (e *env) awaitLogged(id, text string) {
	e.t.Helper()
	testutil.Eventually(e.t, testutil.WaitMedium, "the server to keep "+strconv.Quote(text)+" of run "+id, func() bool {
		return strings.Contains(e.cli("logs", id).stdout, text)
	})
}

// awaitStdout waits until a background command has printed text.
func (b *bg) awaitStdout(t *testing.T, text string) {
	t.Helper()
	testutil.Eventually(t, testutil.WaitMedium, "stdout to show "+strconv.Quote(text), func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return strings.Contains(b.stdout.String(), text)
	})
}

// succeeded waits until a background command exits, fails the test
// unless it exited 0, and returns what it printed.
func (b *bg) succeeded(t *testing.T) (stdout, stderr string) {
	t.Helper()
	code := b.wait(t)
	stdout, stderr = b.output()
	if code != 0 {
		t.Fatalf("devgpu %s: exit %d, stdout %q, stderr %q", strings.Join(b.cmd.Args[1:], " "), code, stdout, stderr)
	}
	return stdout, stderr
}

// wantEndedWithout fails the test unless `devgpu wait` on a run that ended
// for reason (not by its command's exit) exits 255 with one sentence
// naming why.
func (e *env) wantEndedWithout(id, reason, words string) {
	e.t.Helper()
	s := e.waitEnded(id)
	if s.EndReason != reason || s.ExitStatus != nil {
		e.t.Fatalf("session %s ended %q with exit status %s; want %s and no exit status", id, s.EndReason, exitText(s), reason)
	}
	r := e.cli("wait", id)
	if r.code != 255 || r.stdout != "" || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, words) {
		e.t.Fatalf("devgpu wait on a run that ended %s: %+v; want exit 255 and one line saying %q", reason, r, words)
	}
}

func TestDetachedRunLocal(t *testing.T) {
	t.Parallel()
	testDetachedRun(t, newEnv(t, "t4:1"), 1)
}

func TestDetachedRunOCI(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t)
	testDetachedRun(t, e, 2)
}

// A detached run starts, its CLI returns at once, and nothing is attached
// while it runs; a later `logs -f` (by name) prints both streams on their
// own file descriptors and ends with the run, `wait` exits with the run's
// status, the session lists as completed with that status, the usage is
// its running seconds exactly, and its GPU is free again.
func testDetachedRun(t *testing.T, e *env, gpus int) {
	id := e.runDetached("--name", "t1", "--", "sh", "-c", "echo out; echo err >&2; sleep 2; echo done; exit 7")
	returned := time.Now()
	if s := e.session(id); s.Name != "t1" || s.Attachments != 0 {
		t.Fatalf("the detached run lists as %+v; want name t1 and no attachment", s)
	}

	follow := e.background("logs", "t1", "-f")
	stdout, stderr := follow.succeeded(t)
	if stdout != "out\ndone\n" || stderr != "err\n" {
		t.Fatalf("logs -f: stdout %q, stderr %q; want out and done on stdout, err on stderr", stdout, stderr)
	}
	s := e.session(id)
	if s.Active() {
		t.Fatalf("logs -f returned while the run is %s; want it to follow until the run ends", s.State)
	}
	if r := e.cli("wait", id); r.code != 7 {
		t.Fatalf("devgpu wait: %+v; want exit 7, the run's", r)
	}
	wantCompleted(t, s, 7)
	if s.StartedAt == nil || s.EndedAt == nil || !s.EndedAt.After(returned) {
		t.Fatalf("session %s started %v and ended %v; want it to end after `run --detach` returned at %v", id, s.StartedAt, s.EndedAt, returned)
	}
	e.wantBilled(s.EndedAt.Sub(*s.StartedAt).Seconds(), "the detached run's running seconds")
	e.wantFree(gpus, "after the detached run completed")

	if r := e.cli("sessions", "list", "--all"); !strings.Contains(r.stdout, "NAME") || !strings.Contains(r.stdout, "EXIT") || !rowHas(r.stdout, id, "t1", "7") {
		t.Fatalf("sessions list --all: %+v; want the run's row with its name and exit status", r)
	}
	// With timestamps: each line at the time the agent read it, within the
	// run; the last line (printed 2 s after the others) last.
	r := e.cli("logs", "--timestamps", id)
	at := map[string]time.Time{}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout+r.stderr), "\n") {
		stamp, text, _ := strings.Cut(line, " ")
		ts, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil || ts.Before(*s.StartedAt) {
			t.Fatalf("logs --timestamps: line %q has no time since the run started (%v): %v", line, s.StartedAt, err)
		}
		at[text] = ts
	}
	if len(at) != 3 || !at["out"].Before(at["done"]) || !at["err"].Before(at["done"]) {
		t.Fatalf("logs --timestamps: %+v; want out, err and then done", r)
	}
	if r := e.cli("logs", "--stderr", "t1"); r.code != 0 || r.stdout+r.stderr != "err\n" {
		t.Fatalf("logs --stderr: %+v; want err alone", r)
	}
	if r := e.cli("logs", "--since", at["done"].Format(time.RFC3339Nano), "t1"); r.code != 0 || r.stdout != "done\n" || r.stderr != "" {
		t.Fatalf("logs --since the last line's time: %+v; want that line alone", r)
	}
}

// rowHas reports whether a line of a table has all of the words.
func rowHas(table string, words ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		fields := strings.Fields(line)
		all := true
		for _, w := range words {
			found := false
			for _, f := range fields {
				found = found || f == w
			}
			all = all && found
		}
		if all {
			return true
		}
	}
	return false
}

// A `logs -f` killed mid-follow loses nothing: a new one prints the whole
// output, once. One whose network drops mid-follow resumes where it was,
// without a gap or a repeated line; a `wait` whose network drops asks
// again and exits with the run's status.
func TestDetachedLogsFollowResumes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	const n, pause = 30, 15
	id := e.runDetached("--", counter(n, pause)+"; exit 9")
	killed := e.background("logs", "-f", id)
	proxy := testutil.NewProxy(t, e.addr)
	throughProxy := []string{"DEVGPU_URL=http://" + proxy.Addr}
	waiter := e.start(throughProxy, "wait", id)
	dropped := e.start(throughProxy, "logs", "-f", id)
	// The job waits after line 15 until the gate opens: both follow a run
	// that is still printing.
	killed.awaitStdout(t, pausedAt(pause))
	dropped.awaitStdout(t, pausedAt(pause))
	if err := killed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed.wait(t)
	if cut := proxy.Cut(); cut < 2 {
		t.Fatalf("the proxy cut %d connections; want the follower's and the waiter's", cut)
	}
	proxy.Restore()
	e.openGate(id, "go")

	again := e.background("logs", "-f", id)
	stdout, _ := again.succeeded(t)
	wantCounted(t, "a new logs -f after one was killed", stdout, n)
	stdout, _ = dropped.succeeded(t)
	wantCounted(t, "logs -f through a dropped network", stdout, n)
	wantCompleted(t, e.session(id), 9)
	if code := waiter.wait(t); code != 9 {
		_, stderr := waiter.output()
		t.Fatalf("devgpu wait through a dropped network exited %d (%s); want 9, the run's", code, stderr)
	}
}

// `run --detach --wait` behind a full project queues and returns at once;
// with no client anywhere, the server starts the run when the GPU frees
// and it completes, its output kept.
func TestDetachedRunQueued(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("project", "update", "default", "--max-gpus", "1")
	holder := e.terminal("shell")
	holderID := holder.sessionID()
	holder.ready()

	r := e.cli("run", "--detach", "--wait", "--", `echo "ran in $DEVGPU_SESSION_ID"`)
	if r.code != 0 || !strings.Contains(r.stdout+r.stderr, "queued") {
		t.Fatalf("run --detach --wait behind a full project: %+v; want exit 0 at once, saying it is queued", r)
	}
	var id string
	for _, s := range e.sessions() {
		if s.State == sdk.StateQueued {
			id = s.ID
		}
	}
	if id == "" || !strings.Contains(r.stdout, id) {
		t.Fatalf("run --detach --wait printed %+v; want the queued session's id (%q)", r, id)
	}

	if r := e.cli("logs", holderID); r.code != 255 || r.stdout != "" || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || r.stderr == "" {
		t.Fatalf("logs of an interactive session: %+v; want exit 255 and one sentence", r)
	}
	follow := e.background("logs", "-f", id) // from the queue on

	holder.send("exit\r")
	if code := holder.wait(); code != 0 {
		t.Fatalf("the holder's shell exited %d", code)
	}
	wantCompleted(t, e.waitEnded(id), 0)
	if r := e.cli("logs", id); r.code != 0 || r.stdout != "ran in "+id+"\n" || r.stderr != "" {
		t.Fatalf("logs of the run that waited in the queue: %+v", r)
	}
	if stdout, _ := follow.succeeded(t); stdout != "ran in "+id+"\n" {
		t.Fatalf("logs -f started while the run was queued printed %q", stdout)
	}
}

// A control plane killed (SIGKILL) or stopped (SIGTERM) while a run
// prints, and started again, follows it on from where its store says:
// every line once, the exit status right, and the usage the run's
// seconds, billed once; a `logs -f` that followed through the restart
// prints every line once too. A run that exits while the server is down
// has its last lines and its exit collected when the server is back.
func TestDetachedRunSurvivesServerKill(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			testDetachedServerRestart(t, sig)
		})
	}
}

func testDetachedServerRestart(t *testing.T, sig syscall.Signal) {
	e := newEnv(t, "t4:2")
	const n, pause = 30, 15
	id := e.runDetached("--", counter(n, pause)+"; exit 3")
	short := e.runDetached("--", `echo first; `+gated("go")+`; echo last; touch "$HOME/exiting"; exit 5`)
	e.awaitLogged(id, pausedAt(pause))
	e.awaitLogged(short, "first\n")
	follow := e.background("logs", "-f", id)
	follow.awaitStdout(t, pausedAt(pause))
	// A stopped server cuts a follower's stream rather than wait out its
	// 5 s shutdown deadline (the CLI goes on at the next server).
	stopping := time.Now()
	e.stopServer(sig)
	if stopped := time.Since(stopping); stopped > 4*time.Second { // timing: not waiting out the deadline is the behaviour under test
		t.Errorf("the server took %s to stop (%s) with a logs -f following; want it to cut the stream at once", stopped, sig)
	}
	e.openGate(id, "go") // the run prints on with no server
	e.openGate(short, "go")
	testutil.Eventually(t, testutil.WaitMedium, "the short run to exit with no server", func() bool {
		_, err := os.Stat(filepath.Join(e.localHome(short), "exiting"))
		return err == nil
	})
	e.startServer()

	s := e.waitEnded(id)
	wantCompleted(t, s, 3)
	if r := e.cli("wait", id); r.code != 3 {
		t.Fatalf("devgpu wait after the restart: %+v; want exit 3", r)
	}
	e.wantLogged(id, n, "after the server's restart")
	stdout, _ := follow.succeeded(t)
	wantCounted(t, "logs -f through the server's restart", stdout, n)
	sh := e.waitEnded(short)
	wantCompleted(t, sh, 5)
	if r := e.cli("logs", short); r.stdout != "first\nlast\n" || r.stderr != "" {
		t.Fatalf("logs of a run that exited while the server was down: %+v; want first and last", r)
	}
	e.wantBilled(s.EndedAt.Sub(*s.StartedAt).Seconds()+sh.EndedAt.Sub(*sh.StartedAt).Seconds(), "the runs' running seconds, across the restart")
}

// A run that prints far more than its project's log limit: the log keeps
// the last 1 MiB, a marker says what was dropped, the store stays small,
// and a shell in another session answers meanwhile.
func TestDetachedRunLogLimit(t *testing.T) {
	t.Parallel()
	const limit, storeBound = 1 << 20, 16 << 20
	e := newEnv(t, "t4:2")
	e.admin("project", "update", "default", "--log-limit", "1MiB")
	if got := e.projectShow("default").Settings.LogLimitBytes; got == nil || *got != limit {
		t.Fatalf("project default's log limit is %v after --log-limit 1MiB; want %d bytes", got, limit)
	}
	shell := e.terminal("shell")
	shell.sessionID()
	shell.ready()
	storeSize := func() int64 {
		var size int64
		for _, name := range []string{"devgpu.db", "devgpu.db-wal"} {
			if fi, err := os.Stat(filepath.Join(e.dir, "data", name)); err == nil {
				size += fi.Size()
			}
		}
		return size
	}

	// 1 GiB of x in 64 MiB pieces, and on until the gate opens, so that the
	// shell is tried while the run prints; then THE END.
	id := e.runDetached("--", `n=0; while [ $n -lt 16 ] || [ ! -e "$HOME/stop" ]; do head -c 67108864 /dev/zero | tr '\0' x; n=$((n+1)); done; echo; echo THE END`)
	follow := e.background("logs", "-f", id)
	testutil.Eventually(t, testutil.WaitMedium, "the server to keep the run's output", func() bool { return e.session(id).LogBytes > 0 })
	shell.send("echo RO''UND-TRIP\r")
	shell.expect("ROUND-TRIP")
	if s := e.session(id); s.State != sdk.StateRunning {
		t.Fatalf("the printing run is %s after the shell's round trip; want it running (it waits for its gate)", s.State)
	}
	if size := storeSize(); size > storeBound {
		t.Fatalf("the store is %d bytes while the run prints; want at most %d", size, storeBound)
	}
	e.openGate(id, "stop")

	s := e.waitEnded(id)
	wantCompleted(t, s, 0)
	r := e.cli("logs", id)
	if r.code != 0 {
		t.Fatalf("logs of a run over its limit: %+v", r)
	}
	wantXsThenEnd(t, "logs", r.stdout, r.stderr)
	t.Logf("the marker: %s", strings.TrimSpace(r.stderr))
	stdout, stderr := follow.succeeded(t)
	wantXsThenEnd(t, "logs -f", stdout, stderr)
	if s.LogBytes > limit || int64(len(r.stdout)) != s.LogBytes || len(r.stdout) < limit/2 {
		t.Fatalf("the log keeps %d bytes (logs printed %d); want the last output, at most %d and at least half of it", s.LogBytes, len(r.stdout), limit)
	}
	if size := storeSize(); size > storeBound {
		t.Fatalf("the store is %d bytes after a run printed 1 GiB with a 1 MiB log limit; want at most %d", size, storeBound)
	}
}

// wantXsThenEnd fails the test unless a `logs` of a run that printed x
// far past its log limit, and then THE END, printed x... then THE END on
// stdout, and on stderr only markers of what was not kept.
func wantXsThenEnd(t *testing.T, what, stdout, stderr string) {
	t.Helper()
	body := strings.TrimSuffix(stdout, "\nTHE END\n")
	if body == stdout || strings.Trim(body, "x") != "" {
		t.Fatalf("%s of a run over its limit: stdout of %d bytes ending %q; want x... then THE END", what, len(stdout), tail(stdout, 64))
	}
	if strings.TrimSpace(stderr) == "" {
		t.Fatalf("%s of a run over its limit says nothing on stderr of what was dropped", what)
	}
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if !strings.Contains(line, "not kept") {
			t.Fatalf("%s of a run over its limit: %q on stderr, which is no marker of output not kept", what, line)
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// The idle timeout does not end a run whose command still runs (an idle
// shell beside it is ended, so the timeout is at work); the maximum
// lifetime does, and `wait` then says so and exits 255.
func TestDetachedRunIdleAndLifetime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("project", "update", "default", "--idle-timeout", "3s")
	id := e.runDetached("--", gated("go")+"; echo awake")
	shell := e.terminal("shell")
	shellID := shell.sessionID()
	shell.ready()
	e.waitSession(shellID, testutil.WaitMedium, "the idle shell to end", func(s sdk.Session) bool { return !s.Active() })
	if s := e.session(shellID); s.EndReason != sdk.ReasonIdle {
		t.Fatalf("the idle shell's session ended %q; want idle", s.EndReason)
	}
	// The run started before the shell: it has been idle for longer.
	if s := e.session(id); s.State != sdk.StateRunning {
		t.Fatalf("the run is %s (%s) after an idle timeout; want running, its command still runs", s.State, s.EndReason)
	}
	e.openGate(id, "go")
	wantCompleted(t, e.waitEnded(id), 0)
	if r := e.cli("logs", id); r.stdout != "awake\n" {
		t.Fatalf("logs: %+v", r)
	}

	e.admin("project", "update", "default", "--idle-timeout", "0s", "--max-lifetime", "4s")
	id = e.runDetached("--name", "forever", "--", "sleep 1000")
	e.wantEndedWithout(id, sdk.ReasonLifetime, "lifetime")
}

// `shell --attach NAME` opens a shell beside a running job: the same
// files, the same GPU; closing it leaves the job running.
func TestDetachedRunAttach(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	testAttach(t, e, e.openGate)
}

func TestDetachedRunAttachOCI(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t)
	testAttach(t, e, e.cpGate)
}

// testAttach attaches a shell beside a job, which then waits until
// openGate(id, "go") lets it end.
func testAttach(t *testing.T, e *env, openGate func(id, name string)) {
	id := e.runDetached("--name", "beside", "--", `echo "$CUDA_VISIBLE_DEVICES" > "$HOME/job-gpus"; echo from-job > "$HOME/job-file"; echo ready; `+gated("go")+"; echo bye")
	e.awaitLogged(id, "ready\n")
	tm := e.terminal("shell", "--attach", "beside")
	tm.ready()
	tm.send(`echo "SE""SSION=$DEVGPU_SESSION_ID GPUS=$CUDA_VISIBLE_DEVICES JOB=$(cat ~/job-gpus) FILE=$(cat ~/job-file) E""ND"` + "\r")
	tm.expect("SESSION=")
	got := strings.Fields(strings.TrimSuffix(tm.expect(" END"), " END"))
	want := []string{id, "GPUS=" + strings.Join(e.session(id).GPUs, ","), "JOB=" + strings.Join(e.session(id).GPUs, ","), "FILE=from-job"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("the attached shell sees %q; want %q (the job's session, GPU and files)", got, want)
	}
	tm.send("exit\r")
	if code := tm.wait(); code != 0 {
		t.Fatalf("the attached shell exited %d", code)
	}
	// The CLI returns once the server has recorded the shell's leaving (or
	// after a few seconds, on a slow machine): by then a shell session
	// would have ended.
	s := e.waitSession(id, testutil.WaitMedium, "to count no attachment", func(s sdk.Session) bool { return s.Attachments == 0 || !s.Active() })
	if s.State != sdk.StateRunning {
		t.Fatalf("after its attached shell closed the job is %s (%s); want running", s.State, s.EndReason)
	}
	openGate(id, "go")
	wantCompleted(t, e.waitEnded(id), 0)
	if r := e.cli("logs", "beside"); r.stdout != "ready\nbye\n" {
		t.Fatalf("logs: %+v", r)
	}
}

// cpGate creates the file a job waits for (see gated) with `devgpu cp`,
// where the host does not see the session's files (a container).
func (e *env) cpGate(id, name string) {
	e.t.Helper()
	gate := filepath.Join(e.t.TempDir(), name)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if r := e.cli("cp", gate, id+":"+name); r.code != 0 {
		e.t.Fatalf("cp the gate into the job's session: %+v", r)
	}
}

// `cp` copies into a running job's session (the job waits for the file),
// and, with a workspace, what the job left there comes back after it ended
// through a later session.
func TestDetachedRunCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.admin("project", "update", "default", "--workspace")
	id := e.runDetached("--", gated("in.txt")+`; cat "$HOME/in.txt"; tr a-z A-Z < "$HOME/in.txt" > "$DEVGPU_WORKSPACE/out.txt"`)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	if err := os.WriteFile(in, []byte("copied in\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := e.cli("cp", in, id+":in.txt"); r.code != 0 {
		t.Fatalf("cp into the running job's session: %+v", r)
	}
	wantCompleted(t, e.waitEnded(id), 0)
	if r := e.cli("logs", id); r.stdout != "copied in\n" {
		t.Fatalf("logs: %+v; want the file the job read", r)
	}

	later := e.terminal("shell")
	laterID := later.sessionID()
	later.ready()
	out := filepath.Join(dir, "out.txt")
	if r := e.cli("cp", laterID+":workspace/out.txt", out); r.code != 0 {
		t.Fatalf("cp from the workspace after the job ended: %+v", r)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "COPIED IN\n" {
		t.Fatalf("the job's result from its workspace: %q, %v", b, err)
	}
}

// `sessions stop NAME` ends the newest running job of that name: reason
// stopped, no exit status, and `wait`, waiting already or asked after,
// exits 255 with a sentence; so does an administrator's stop of another
// user's run, for its owner. Nobody else sees a user's runs.
func TestDetachedRunStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	earlier := e.runDetached("--name", "stopme", "--", "true")
	wantCompleted(t, e.waitEnded(earlier), 0)
	// The name now means the newest run that has it.
	id := e.runDetached("--name", "stopme", "--", "sleep 1000")
	e.waitSession(id, testutil.WaitMedium, "to run", func(s sdk.Session) bool { return s.State == sdk.StateRunning })
	waiting := e.background("wait", "stopme")
	if r := e.cli("sessions", "stop", "stopme"); r.code != 0 {
		t.Fatalf("sessions stop: %+v", r)
	}
	e.wantEndedWithout(id, sdk.ReasonStopped, "stopped")
	if code := waiting.wait(t); code != 255 {
		t.Fatalf("a wait started before the stop exited %d; want 255", code)
	}
	e.wantFree(1, "after the job was stopped")

	// An administrator stops another user's run: its owner's wait says so.
	dana := e.newUser("dana")
	e.admin("member", "add", "default", "dana")
	id = dana.runDetached("--", "sleep 1000")
	dana.waitSession(id, testutil.WaitMedium, "to run", func(s sdk.Session) bool { return s.State == sdk.StateRunning })
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop by an administrator: %+v", r)
	}
	dana.wantEndedWithout(id, sdk.ReasonAdmin, "administrator")

	// Another user's runs are not there for her, by id or by name.
	for _, args := range [][]string{{"logs", earlier}, {"logs", "stopme"}, {"logs", "-f", earlier}, {"wait", earlier}, {"wait", "stopme"}, {"shell", "--attach", "stopme"}} {
		if r := dana.cli(args...); r.code != 255 || r.stdout != "" || !strings.Contains(r.stderr, "no session or run named") {
			t.Errorf("devgpu %s by another user: %+v; want exit 255 and that there is no such run", strings.Join(args, " "), r)
		}
	}
}

// A run killed by a signal records it: exit status 128+9, signal KILL,
// and `wait` exits with that status.
func TestDetachedRunKilledBySignal(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	id := e.runDetached("--", "sh", "-c", "echo dying; kill -KILL $$")
	s := e.waitEnded(id)
	wantCompleted(t, s, 128+int(syscall.SIGKILL))
	if s.ExitSignal != "KILL" {
		t.Fatalf("exit signal %q, want KILL", s.ExitSignal)
	}
	if r := e.cli("wait", id); r.code != 128+int(syscall.SIGKILL) {
		t.Fatalf("devgpu wait on a run killed by SIGKILL: %+v; want exit %d", r, 128+int(syscall.SIGKILL))
	}
	if r := e.cli("logs", id); r.stdout != "dying\n" {
		t.Fatalf("logs: %+v", r)
	}
}

// On the oci runtime too, a run outlives a killed control plane: opened
// just before the kill (through `devgpu cp`, the container's files being
// out of the host's reach), the job prints on, and the restarted server
// keeps every line once and the exit status.
func TestDetachedRunSurvivesServerKillOCI(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t)
	const n, pause = 45, 15
	id := e.runDetached("--", counter(n, pause)+"; exit 6")
	e.awaitLogged(id, pausedAt(pause))
	e.cpGate(id, "go")
	e.stopServer(syscall.SIGKILL)
	e.startServer()

	s := e.waitEnded(id)
	wantCompleted(t, s, 6)
	e.wantLogged(id, n, "after the server's restart")
	e.wantBilled(s.EndedAt.Sub(*s.StartedAt).Seconds(), "the run's running seconds, across the restart")
}

// Output is kept byte for byte: every byte value, 256 KiB of them in no
// lines, comes back from `logs` as the run printed it.
func TestDetachedRunBinaryOutput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	id := e.runDetached("--", `i=0; while [ $i -lt 256 ]; do printf "\\$(printf %o $i)"; i=$((i+1)); done > b; `+
		`for d in 1 2 3 4 5 6 7 8 9 10; do cat b b > b2; mv b2 b; done; cat b`)
	wantCompleted(t, e.waitEnded(id), 0)
	var want strings.Builder
	for range 1 << 10 {
		for b := range 256 {
			want.WriteByte(byte(b))
		}
	}
	if r := e.cli("logs", id); r.code != 0 || r.stdout != want.String() || r.stderr != "" {
		t.Fatalf("logs of every byte value: exit %d, %d bytes on stdout (want %d, bytes 0 to 255 over and over), stderr %q", r.code, len(r.stdout), want.Len(), r.stderr)
	}
}

// A detached run never takes a warm pool's ready session: it starts its
// own, and the ready one stays for the next shell.
func TestDetachedRunLeavesWarmPool(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("pool", "set", "default", "--gpu", "t4", "--size", "1")
	var ready string
	testutil.Eventually(t, testutil.WaitMedium, "a ready session", func() bool {
		r := e.cli("sessions", "list", "--all", "--all-users", "--json")
		var all []sdk.Session
		_ = json.Unmarshal([]byte(r.stdout), &all)
		for _, s := range all {
			if s.User == "warm-pool" && s.State == sdk.StateRunning {
				ready = s.ID
			}
		}
		return ready != ""
	})
	id := e.runDetached("--", `echo "$DEVGPU_SESSION_ID $DEVGPU_USER"`)
	wantCompleted(t, e.waitEnded(id), 0)
	if r := e.cli("logs", id); id == ready || r.stdout != id+" root\n" {
		t.Fatalf("the detached run ran as %q in session %s; want its own session, not the ready %s, as root", r.stdout, id, ready)
	}
	if s := e.anySession(ready); s.State != sdk.StateRunning || s.User != "warm-pool" {
		t.Fatalf("the ready session after a detached run: %+v; want it still ready for a shell", s)
	}
}

// A queued detached run keeps its place across a killed server: a queued
// `run --wait` whose client went with the server is given up after the
// detach grace, the detached run is not, and it starts when the GPU frees.
func TestDetachedRunQueuedSurvivesServerKill(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.admin("project", "update", "default", "--detach-grace", "1s")
	holder := e.runDetached("--", gated("go"))
	e.waitSession(holder, testutil.WaitMedium, "to run", func(s sdk.Session) bool { return s.State == sdk.StateRunning })
	r := e.cli("run", "--detach", "--wait", "--name", "patient", "--", "echo patient")
	if r.code != 0 {
		t.Fatalf("run --detach --wait: %+v", r)
	}
	client := e.background("run", "--wait", "--", "echo impatient")
	client.waitStderr(t, "queued, position 2")
	var away string
	for _, s := range e.sessions() {
		if s.State == sdk.StateQueued && s.Name != "patient" {
			away = s.ID
		}
	}

	e.stopServer(syscall.SIGKILL)
	if err := client.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	client.wait(t)
	e.startServer()
	e.waitSession(away, testutil.WaitMedium, "whose client went with the server to leave the queue", func(s sdk.Session) bool { return !s.Active() })
	var patient sdk.Session
	for _, s := range e.sessions() {
		if s.Name == "patient" {
			patient = s
		}
	}
	if patient.State != sdk.StateQueued {
		t.Fatalf("the queued detached run is %s (%s) after the restart; want it queued still", patient.State, patient.EndReason)
	}

	e.openGate(holder, "go")
	wantCompleted(t, e.waitEnded(patient.ID), 0)
	if r := e.cli("logs", "patient"); r.stdout != "patient\n" {
		t.Fatalf("logs: %+v", r)
	}
}

// A project whose budget stops running sessions stops a detached run too
// once it is spent: reason budget, and `wait` says so.
func TestDetachedRunBudget(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1", "--budget-interval", "100ms")
	// 0.001 GPU-hours: 3.6 GPU-seconds.
	e.admin("project", "update", "default", "--budget", "0.001", "--budget-unit", "gpu-hours", "--budget-action", "stop")
	id := e.runDetached("--", "sleep 1000")
	e.wantEndedWithout(id, sdk.ReasonBudget, "budget")
}

// A run whose agent dies (SIGKILL: the session's processes are gone) ends
// lost, with no exit status, and `wait` says so.
func TestDetachedRunLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	id := e.runDetached("--", "echo before; sleep 1000")
	e.awaitLogged(id, "before\n")
	b, err := os.ReadFile(filepath.Join(e.dir, "data", "sessions", id, "agent.pid"))
	if err != nil {
		t.Fatalf("the local session's agent pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b) + " -")[0])
	if err != nil || pid <= 1 {
		t.Fatalf("agent.pid holds %q", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the session's agent: %v", err)
	}
	e.wantEndedWithout(id, sdk.ReasonLost, "lost")
	if r := e.cli("logs", id); r.stdout != "before\n" {
		t.Fatalf("logs of a lost run: %+v; want what it printed before", r)
	}
}

// A detached run's command runs as `devgpu run`'s does: the same
// environment, directory, limits, capabilities and sandbox, apart from
// the session's id and GPUs.
func TestDetachedRunRunsAsRunDoes(t *testing.T) {
	t.Parallel()
	testRunsAsRunDoes(t, newEnv(t, "t4:1"))
}

func TestDetachedRunRunsAsRunDoesOCI(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t)
	testRunsAsRunDoes(t, e)
}

func testRunsAsRunDoes(t *testing.T, e *env) {
	const probe = `env | sort; pwd; ulimit -a; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; id`
	r := e.cli("run", "--", probe)
	if r.code != 0 {
		t.Fatalf("run: %+v", r)
	}
	runID := strings.TrimPrefix(grepLine(r.stdout, "DEVGPU_SESSION_ID="), "DEVGPU_SESSION_ID=")
	if runID == "" {
		t.Fatalf("`devgpu run`'s command has no DEVGPU_SESSION_ID:\n%s", r.stdout)
	}
	attached := e.anonymous(r.stdout, runID)
	id := e.runDetached("--", probe)
	wantCompleted(t, e.waitEnded(id), 0)
	detached := e.anonymous(e.cli("logs", id).stdout, id)
	if detached != attached {
		t.Fatalf("a detached run's command sees:\n%s\nwhere `devgpu run`'s sees:\n%s", detached, attached)
	}
}

// anonymous is text with session id's id and GPUs' ids written ID and GPU.
func (e *env) anonymous(text, id string) string {
	e.t.Helper()
	for _, gpu := range e.session(id).GPUs {
		text = strings.ReplaceAll(text, gpu, "GPU")
	}
	return strings.ReplaceAll(text, id, "ID")
}

// grepLine is the first line of text that starts with prefix.
func grepLine(text, prefix string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}
