package e2e

// The first hour of a new user, part B (issue 10): what the CLI and the
// server say about themselves, the defaults a user with one project
// meets, and how the dev server is stopped.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// newUser creates a user and returns the installation as they see it.
func (e *env) newUser(name string) *env {
	e.t.Helper()
	r := e.cli("admin", "user", "create", name, "--json")
	if r.code != 0 {
		e.t.Fatalf("admin user create %s: %+v", name, r)
	}
	var created struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil {
		e.t.Fatalf("admin user create --json: %v\n%s", err, r.stdout)
	}
	return e.as(created.Token)
}

// auditEvents reads the audit log through the CLI's --json contract.
func (e *env) auditEvents(action string) []sdk.AuditEvent {
	e.t.Helper()
	r := e.cli("admin", "audit", "--json")
	if r.code != 0 {
		e.t.Fatalf("admin audit: %+v", r)
	}
	var all []sdk.AuditEvent
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		e.t.Fatalf("admin audit --json: %v\n%s", err, r.stdout)
	}
	var out []sdk.AuditEvent
	for _, ev := range all {
		if ev.Action == action {
			out = append(out, ev)
		}
	}
	return out
}

// devgpu --version, the server's log, /healthz and doctor all name the
// same version.
func TestFirstHourVersion(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	r := e.cli("--version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "devgpu ") {
		t.Fatalf("devgpu --version: %+v", r)
	}
	v := strings.TrimSpace(strings.TrimPrefix(r.stdout, "devgpu "))
	if v == "" || strings.ContainsAny(v, " \n") {
		t.Fatalf("devgpu --version printed %q, want one version word", r.stdout)
	}
	if !strings.Contains(e.log.String(), "version="+v+" ") {
		t.Errorf("the server's start line does not give version %s:\n%s", v, e.log.String())
	}
	get, err := http.Get("http://" + e.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := io.ReadAll(get.Body)
	get.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Status  string `json:"status"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal(resp, &h); err != nil || h.Status != "ok" || h.Version != v {
		t.Errorf("/healthz = %s (%v), want status ok and version %s", resp, err, v)
	}
	d := e.cli("doctor")
	if !strings.Contains(d.stdout, "devgpu "+v+", server "+v) {
		t.Errorf("doctor does not show both versions:\n%s", d.stdout)
	}
}

// A user who may use one project needs no -p; one with several is told
// which they are; one who asks for an image on the local runtime is told
// that it is ignored, and gets a session.
func TestFirstHourDefaultProjectAndImage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	e.admin("project", "create", "ml")
	alice := e.newUser("alice")
	e.admin("member", "add", "ml", "alice")

	r := alice.cli("run", "--", "echo $DEVGPU_PROJECT")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "ml" {
		t.Fatalf("alice's run without -p: %+v, want it in her only project ml", r)
	}

	r = alice.cli("run", "--image", "python-cuda", "--", "true")
	if r.code != 0 {
		t.Fatalf("run --image on the local runtime: %+v, want the image ignored and the command run", r)
	}
	if !strings.Contains(r.stderr, `--image "python-cuda" is ignored: the local runtime`) {
		t.Errorf("run --image on the local runtime did not say the image is ignored:\n%s", r.stderr)
	}

	e.admin("project", "create", "cv")
	e.admin("member", "add", "cv", "alice")
	r = alice.cli("run", "--", "true")
	if r.code != 255 || !strings.Contains(r.stderr, "several projects (cv, ml)") || !strings.Contains(r.stderr, "-p PROJECT") {
		t.Errorf("a run without -p for a member of two projects: %+v, want an error that lists them", r)
	}
	if r := alice.cli("run", "-p", "cv", "--", "true"); r.code != 0 {
		t.Errorf("run -p cv: %+v", r)
	}
}

// sessions list shows what has not ended; --all adds the ended ones;
// --all-users shows an organisation admin everyone's.
func TestFirstHourSessionsList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:2")
	if r := e.cli("run", "--", "true"); r.code != 0 {
		t.Fatalf("run: %+v", r)
	}
	ended := e.sessions()[0].ID
	tm := e.terminal("shell")
	running := tm.sessionID()
	tm.ready()

	r := e.cli("sessions", "list")
	if r.code != 0 || !strings.Contains(r.stdout, running) || strings.Contains(r.stdout, ended) {
		t.Errorf("sessions list shows %q; want running %s and not ended %s", r.stdout, running, ended)
	}
	r = e.cli("sessions", "list", "--all")
	if !strings.Contains(r.stdout, running) || !strings.Contains(r.stdout, ended) {
		t.Errorf("sessions list --all shows %q; want %s and %s", r.stdout, running, ended)
	}
	var list []sdk.Session
	r = e.cli("sessions", "list", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || list[0].ID != running {
		t.Errorf("sessions list --json = %s (%v), want only %s", r.stdout, err, running)
	}

	bob := e.newUser("bob")
	e.admin("member", "add", "default", "bob")
	if r := bob.cli("run", "--", "true"); r.code != 0 {
		t.Fatalf("bob's run: %+v", r)
	}
	r = e.cli("sessions", "list", "--all", "--all-users")
	if !strings.Contains(r.stdout, "bob") {
		t.Errorf("an admin's --all --all-users lacks bob's session:\n%s", r.stdout)
	}
	if r := bob.cli("sessions", "list", "--all-users"); r.code != 255 || !strings.Contains(r.stderr, "only organisation admins") {
		t.Errorf("a developer's --all-users: %+v, want a refusal", r)
	}
	tm.send("exit\r")
	tm.wait()
}

// A command called with the wrong arguments says what it takes in one
// sentence and shows its usage, never cobra's "accepts 1 arg(s)".
func TestFirstHourUsageErrors(t *testing.T) {
	t.Parallel()
	bin := testutil.Binary(t)
	for _, tc := range []struct {
		args  []string
		usage string
	}{
		{[]string{"sessions", "stop"}, "usage: devgpu sessions stop ID"},
		{[]string{"run"}, "usage: devgpu run [flags] -- CMD [ARG...]"},
		{[]string{"admin", "member", "add", "ml"}, "usage: devgpu admin member add PROJECT USER"},
		{[]string{"gpus", "extra"}, "usage: devgpu gpus"},
		{[]string{"admin", "projekt"}, "usage: devgpu admin"},
		{[]string{"shel"}, "usage: devgpu "},
		{[]string{"shell", "--bogus"}, "usage: devgpu shell"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			r := runBinary(t, bin, tc.args...)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code != 255 || len(lines) != 2 || !strings.HasPrefix(lines[0], "devgpu: ") || !strings.HasPrefix(lines[1], tc.usage) {
				t.Fatalf("devgpu %s: exit %d, stderr:\n%s\nwant 255, one sentence, then %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.usage)
			}
			if strings.Contains(r.stderr, "arg(s)") {
				t.Errorf("cobra's stock message: %s", r.stderr)
			}
		})
	}
}

// runBinary runs devgpu with no config at all.
func runBinary(t *testing.T, bin string, args ...string) result {
	t.Helper()
	e := &env{t: t, bin: bin, dir: t.TempDir()}
	return e.cli(args...)
}

// doctor tells a user whose DEVGPU_TOKEN overrides the config's token.
func TestFirstHourDoctorTokenOverride(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	r := e.cliEnv([]string{"DEVGPU_TOKEN=stale-token-from-an-old-shell"}, "doctor")
	if r.code != 255 || !strings.Contains(r.stdout, "DEVGPU_TOKEN in your environment overrides the token in your config") {
		t.Errorf("doctor with a stale DEVGPU_TOKEN: %+v, want it named as the cause", r)
	}
	r = e.cliEnv([]string{"DEVGPU_TOKEN=stale-token-from-an-old-shell"}, "gpus")
	if r.code != 255 || !strings.Contains(r.stderr, "unset DEVGPU_TOKEN") {
		t.Errorf("gpus with a stale DEVGPU_TOKEN: %+v, want it named as the cause", r)
	}
}

// project show prints the budget and the workspace in words.
func TestFirstHourProjectShow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.admin("project", "update", "default", "--budget", "500", "--budget-thresholds", "50,80",
		"--workspace", "--workspace-limit", "2GB")
	r := e.cli("admin", "project", "show", "default")
	if r.code != 0 {
		t.Fatalf("project show: %+v", r)
	}
	for _, want := range []string{"500 a month (rate card currency), warn at 50%, 80%; at 100% refuse new sessions", "on, 2.0 GB per user"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("project show lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "{") {
		t.Errorf("project show prints JSON:\n%s", r.stdout)
	}
}

// The audit log records no event for a change that changed nothing, and
// records whole before and after values.
func TestFirstHourAudit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	e.newUser("bob")
	e.admin("project", "update", "default", "--max-gpus", "2")
	e.admin("project", "update", "default", "--max-gpus", "2")
	e.admin("member", "add", "default", "bob")
	e.admin("member", "add", "default", "bob")
	e.admin("member", "add", "default", "bob", "--role", "admin")

	if got := e.auditEvents("project.update"); len(got) != 1 {
		t.Errorf("two identical updates wrote %d project.update events, want 1: %+v", len(got), got)
	}
	members := e.auditEvents("member.set")
	if len(members) != 2 {
		t.Fatalf("add, same add, role change wrote %d member.set events, want 2: %+v", len(members), members)
	}
	// The newest first or last: find the role change by its before.
	var change *sdk.AuditEvent
	for i := range members {
		if members[i].Before != nil {
			change = &members[i]
		}
	}
	if change == nil {
		t.Fatalf("no member.set event with a before value: %+v", members)
	}
	var before, after sdk.Member
	b, _ := json.Marshal(change.Before)
	a, _ := json.Marshal(change.After)
	if json.Unmarshal(b, &before) != nil || json.Unmarshal(a, &after) != nil ||
		before != (sdk.Member{User: "bob", Role: "developer"}) || after != (sdk.Member{User: "bob", Role: "admin"}) {
		t.Errorf("member.set before %s after %s, want the whole member on both sides", b, a)
	}
}

// SIGTERM stops the server without an error in its log, with a shell
// open; `devgpu server stop` does the same through the pid file, and
// signals no other server.
func TestFirstHourServerStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	other := newEnv(t, "t4:1")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	data := filepath.Join(e.dir, "data")
	pidFile := filepath.Join(data, "server.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil || !strings.HasPrefix(string(b), fmt.Sprintf("%d ", e.server.Process.Pid)) {
		t.Fatalf("pid file %s = %q (%v), want the server's pid %d", pidFile, b, err, e.server.Process.Pid)
	}

	server := e.server
	r := e.cli("server", "stop", "--data", data)
	if r.code != 0 {
		t.Fatalf("server stop: %+v", r)
	}
	<-e.exited // server stop returns once it has exited
	e.server = nil
	e.wantCleanExit(server)
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("the pid file outlived the server: %v", err)
	}
	if other.healthz().Status != "ok" {
		t.Error("server stop stopped another server too")
	}

	// The session outlives its server, and the next one finds it.
	e.startServer()
	if s := e.session(id); s.State != sdk.StateRunning {
		t.Errorf("after a clean stop and restart, session %s is %s, want running", id, s.State)
	}
	r = e.cli("server", "stop", "--data", filepath.Join(t.TempDir(), "none"))
	if r.code != 255 || !strings.Contains(r.stderr, "no devgpu server runs on") {
		t.Errorf("server stop on a directory without a server: %+v", r)
	}
}

// wantCleanExit checks that server, stopped by SIGTERM, exited 0 and
// logged no error while stopping.
func (e *env) wantCleanExit(server *exec.Cmd) {
	e.t.Helper()
	if code := server.ProcessState.ExitCode(); code != 0 {
		e.t.Errorf("the server exited %d after SIGTERM, want 0", code)
	}
	for _, line := range strings.Split(e.log.String(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			e.t.Errorf("the server logged an error while stopping: %s", line)
		}
	}
}

// SIGTERM (what systemd and `devgpu server stop` send) stops a server with
// an open shell cleanly: exit status 0, no error in its log.
func TestFirstHourSIGTERM(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	server := e.server
	if err := server.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.exited:
	case <-time.After(testutil.WaitLong):
		t.Fatal("the server did not exit after SIGTERM")
	}
	e.server = nil
	e.wantCleanExit(server)
	e.startServer()
	if s := e.session(id); s.State != sdk.StateRunning {
		t.Errorf("after SIGTERM and a restart, session %s is %s, want running", id, s.State)
	}
}

// What the README promises on reattach: after a dropped connection, what
// was started with nohup still runs in the session; so does a plain
// background job, as `devgpu shell` on a terminal keeps its shell across a
// dropped connection (reconnect_test.go), and the --attach shell is a new
// one beside it.
func TestFirstHourReattachKeepsNohup(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	tm := e.terminal("shell")
	id := tm.sessionID()
	tm.ready()
	tm.send("sleep 1001 & echo $! > plain.pid; nohup sleep 1002 >/dev/null 2>&1 & echo $! > nohup.pid; echo ST''ARTED\r")
	tm.expect("STARTED")
	// nohup ignores SIGHUP only once it runs; it is sleep once it has.
	tm.send("until [ \"$(cat /proc/$(cat nohup.pid)/comm)\" = sleep ]; do sleep 0.05; done; echo NOHUP_RU''NNING\r")
	tm.expect("NOHUP_RUNNING")
	_ = tm.cmd.Process.Kill() // the connection drops
	tm.wait()

	again := e.terminal("shell", "--attach", id)
	again.ready()
	again.send("kill -0 $(cat plain.pid) && echo PLAIN_AL''IVE\r")
	again.expect("PLAIN_ALIVE")
	again.send("kill -0 $(cat nohup.pid) && echo NOHUP_AL''IVE\r")
	again.expect("NOHUP_ALIVE")
	again.send("exit\r")
	again.wait()
}
