package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// runSession runs `devgpu run -- cmd` in the background and returns the
// id of the session it started, once running.
func (e *env) runSession(cmd string) string {
	e.t.Helper()
	before := map[string]bool{}
	for _, s := range e.sessions() {
		before[s.ID] = true
	}
	e.background("run", "--", cmd)
	var id string
	testutil.Eventually(e.t, testutil.WaitMedium, "`devgpu run -- "+cmd+"` to start a session", func() bool {
		for _, s := range e.running() {
			if !before[s.ID] {
				id = s.ID
				return true
			}
		}
		return false
	})
	return id
}

// From inside a local session, a hostile user tries to read the store, the
// CLI config with the admin's token, another session's agent directory and
// the server's environment, and looks for the server's planted secret in
// its own environment. Every attempt fails.
func TestLocalSessionCannotReachSecrets(t *testing.T) {
	const planted = "planted-e2e-secret-5eed"
	t.Setenv("AWS_SECRET_ACCESS_KEY", planted) // the server inherits it
	e := newEnv(t, "t4:2")
	victim := e.runSession("sleep 1000")
	data := filepath.Join(e.dir, "data")
	victimDir := filepath.Join(data, "sessions", victim)
	if _, err := os.Stat(filepath.Join(victimDir, "agent.sock")); err != nil {
		t.Fatalf("the victim's socket is not where this test looks: %v", err)
	}
	config := filepath.Join(e.dir, "config.json")
	if b, err := os.ReadFile(config); err != nil || !bytes.Contains(b, []byte("token")) {
		t.Fatalf("the CLI config is not where this test looks: %v", err)
	}
	attacks := []struct{ name, cmd string }{
		{"read the store", "cat " + filepath.Join(data, "devgpu.db") + " | head -c 16 | grep ."},
		{"list the data directory", "ls -A " + data + " | grep -vx sessions | grep ."},
		{"read the CLI config with the admin token", "cat " + config + " | grep ."},
		{"list another session's directory", "ls -A " + victimDir + " | grep ."},
		{"reach another session's agent socket", "test -e " + filepath.Join(victimDir, "agent.sock")},
		{"read another session's agent log", "cat " + filepath.Join(victimDir, "agent.log")},
		{"read the server's environment", "cat /proc/" + strconv.Itoa(e.server.Process.Pid) + "/environ | grep ."},
		{"find the server's secret in any environment", "cat /proc/*/environ 2>/dev/null | grep -a " + planted},
		{"read the agent's memory", "head -c1 /proc/1/mem | grep ."},
		{"unmount what hides the data directory", "unshare -Urm sh -c 'umount -l " + data + " && ls -A " + data + " | grep -vx sessions | grep .'"},
	}
	var script strings.Builder
	for i, a := range attacks {
		// Each attack prints LEAK<i> only if it succeeds.
		script.WriteString("if (" + a.cmd + ") >/dev/null 2>&1; then echo LEAK" + strconv.Itoa(i) + "; fi\n")
	}
	script.WriteString("echo ENV; env | cut -d= -f1; echo DONE\n")
	r := e.cli("run", "--", script.String())
	if r.code != 0 || !strings.Contains(r.stdout, "DONE") {
		t.Fatalf("devgpu run: %+v", r)
	}
	for i, a := range attacks {
		if strings.Contains(r.stdout, "LEAK"+strconv.Itoa(i)+"\n") {
			t.Errorf("a session could %s", a.name)
		}
	}
	_, names, _ := strings.Cut(r.stdout, "ENV\n")
	names, _, _ = strings.Cut(names, "DONE")
	documented := []string{"PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL", "HOME", "PWD", "SHLVL", "_", "OLDPWD", "TERM",
		"DEVGPU_SESSION_ID", "DEVGPU_PROJECT", "DEVGPU_USER", "DEVGPU_GPU_TYPE", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
		"DEVGPU_WORKSPACE", "DEVGPU_WORKSPACE_READONLY"}
	for _, name := range strings.Fields(names) {
		if !slices.Contains(documented, name) {
			t.Errorf("the session's environment has %s, which is not a documented session variable", name)
		}
	}
	if strings.Contains(r.stdout, planted) {
		t.Errorf("the server's secret reached the session:\n%s", r.stdout)
	}
}

// A process that drops every variable and leaves its process group with
// setsid does not outlive its session.
func TestLocalSessionSetsidDoesNotOutliveIt(t *testing.T) {
	e := newEnv(t, "t4:1")
	marker := "devgpu-escape-" + strconv.Itoa(os.Getpid())
	r := e.cli("run", "--", "env -i setsid sh -c 'sleep 1000; :' "+marker+" </dev/null >/dev/null 2>&1 & "+
		"(env -i setsid sh -c '(sh -c \"sleep 1000; :\" "+marker+" &)' </dev/null >/dev/null 2>&1 &); echo started")
	if r.code != 0 || r.stdout != "started\n" {
		t.Fatalf("devgpu run: %+v", r)
	}
	testutil.Eventually(t, testutil.WaitMedium, "the session to end", func() bool { return len(e.running()) == 0 })
	testutil.Eventually(t, testutil.WaitShort, "the escaped processes to be gone", func() bool {
		return len(testutil.ProcessesWith(marker)) == 0
	})
}

// A fork bomb in a local session stops at the session's pids limit; the
// server keeps answering and stops the session, bomb and all.
func TestLocalForkBombIsContained(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a session's pids limit needs a writable pids cgroup, which only root has here")
	}
	const limit, bound = 64, 500
	e := newEnv(t, "t4:1", "--local-max-pids", strconv.Itoa(limit))
	marker := "devgpu-bomb-" + strconv.Itoa(os.Getpid())
	// Each child is one process that never exits (sleep, under a name
	// carrying the marker), so the count only grows and the subshell (dash)
	// gives up at the first fork that fails. A child that forked again could
	// fail at the limit, exit and free its slot, and the loop would go on.
	// The echo, the test and the exec need no fork of their own.
	id := e.runSession(`b="$HOME/` + marker + `"; ln -s "$(command -v sleep)" "$b"; ` +
		`(n=0; while [ $n -lt ` + strconv.Itoa(bound) + ` ]; do "$b" 1000 & n=$((n+1)); echo $n > "$HOME/n"; done); ` +
		`echo done > "$HOME/done"; exec sleep 1000`)
	home := filepath.Join(e.dir, "data", "sessions", id, "home")
	client := &http.Client{Timeout: testutil.WaitShort}
	healthy := func() bool {
		resp, err := client.Get("http://" + e.addr + "/healthz")
		if err != nil {
			t.Fatalf("the server stopped answering during the fork bomb: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	testutil.Eventually(t, testutil.WaitLong, "the bomb to hit its limit", func() bool {
		healthy()
		_, err := os.Stat(filepath.Join(home, "done"))
		return err == nil
	})
	b, _ := os.ReadFile(filepath.Join(home, "n"))
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n >= bound || n == 0 {
		t.Fatalf("the session forked %q times, want it stopped by its limit of %d processes", b, limit)
	}
	if live := len(testutil.ProcessesWith(marker)); live > limit {
		t.Fatalf("%d processes of the bomb run, more than the session's limit of %d", live, limit)
	}
	if !healthy() {
		t.Fatal("/healthz is not ok beside the bomb")
	}
	if r := e.cli("sessions", "stop", id); r.code != 0 {
		t.Fatalf("sessions stop: %+v", r)
	}
	e.waitSession(id, testutil.WaitMedium, "to end", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	testutil.Eventually(t, testutil.WaitShort, "the bomb's processes to be gone", func() bool { return len(testutil.ProcessesWith(marker)) == 0 })
}

// serverRefusal runs `devgpu server` with args and returns its output once
// it exits, failing the test if it keeps running.
func serverRefusal(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitMedium)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.Binary(t), append([]string{"server"}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("devgpu server %s kept running; want a refusal:\n%s", strings.Join(args, " "), out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return string(out), code
}

// Without --dev the server runs the oci runtime, and refuses the local one
// unless told it is insecure; with --dev the local runtime serves one user,
// and several only with the flag, which `devgpu doctor` then warns about.
func TestLocalRuntimeIsForOnePerson(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	env := append(os.Environ(), "DEVGPU_CONFIG="+filepath.Join(dir, "config.json"), "DEVGPU_URL=", "DEVGPU_TOKEN=")
	common := []string{"--data", filepath.Join(dir, "data"), "--listen", freeAddr(t), "--gpus", "t4:1"}
	out, code := serverRefusal(t, env, append([]string{"--runtime", "local"}, common...)...)
	if code == 0 || !strings.Contains(out, "--insecure-local-runtime") || !strings.Contains(out, "--runtime oci") {
		t.Errorf("server --runtime local without --dev: exit %d, output:\n%s\nwant a refusal naming --insecure-local-runtime and --runtime oci", code, out)
	}
	// Without --dev and without --runtime, it is the oci runtime that
	// starts (and here fails for want of its static agent binary).
	out, code = serverRefusal(t, env, common...)
	if code == 0 || !strings.Contains(out, "oci runtime") {
		t.Errorf("server without --dev: exit %d, output:\n%s\nwant the oci runtime", code, out)
	}

	// --dev without the flag: the local runtime, for one person.
	e := newEnv(t, "t4:1")
	e.stopServer(syscall.SIGTERM)
	e.startSingleUserServer()
	r := e.cli("admin", "user", "create", "bob")
	if r.code == 0 || !strings.Contains(r.stderr, "local runtime") || !strings.Contains(r.stderr, "--insecure-local-runtime") {
		t.Fatalf("a second user on the one-person local runtime: %+v", r)
	}
	if r := e.cli("doctor", "--json"); !strings.Contains(r.stdout, `"runtime"`) || strings.Contains(r.stdout, `"WARN"`) {
		t.Errorf("doctor on a one-person local runtime: %+v", r)
	}
	e.stopServer(syscall.SIGTERM)

	// With the flag: several users, a warning in the log and in doctor.
	e.startServer()
	if r := e.cli("admin", "user", "create", "bob"); r.code != 0 {
		t.Fatalf("user create with --insecure-local-runtime: %+v", r)
	}
	if !strings.Contains(e.log.String(), "--insecure-local-runtime lets several users") {
		t.Errorf("no warning in the server's log:\n%s", e.log.String())
	}
	r = e.cli("doctor", "--json")
	var checks []struct{ Check, Status, Detail string }
	_ = json.Unmarshal([]byte(r.stdout), &checks)
	warned := false
	for _, c := range checks {
		warned = warned || c.Check == "runtime" && c.Status == "WARN" && strings.Contains(c.Detail, "local runtime")
	}
	if !warned {
		t.Errorf("doctor does not warn of the shared local runtime: %+v", r)
	}
	e.stopServer(syscall.SIGTERM)

	// Over a store with two users, the one-person runtime refuses to start.
	out, code = serverRefusal(t, e.environ(), e.singleUserArgs()...)
	if code == 0 || !strings.Contains(out, "2 users") || !strings.Contains(out, "--insecure-local-runtime") {
		t.Errorf("server --dev over two users without the flag: exit %d:\n%s", code, out)
	}
}

// singleUserArgs are startServer's flags without --insecure-local-runtime.
func (e *env) singleUserArgs() []string {
	return []string{"--dev", "--data", filepath.Join(e.dir, "data"), "--listen", e.addr, "--gpus", e.gpus, "--log-level", "debug"}
}

// startSingleUserServer starts the server as startServer does, without
// --insecure-local-runtime.
func (e *env) startSingleUserServer() {
	e.t.Helper()
	e.startServerWith(e.singleUserArgs())
}

// A server that is not root runs local sessions the same way, as its own
// user, and says that it cannot bound their processes. The test runs the
// server and the CLI as nobody, a real unprivileged user.
func TestLocalRuntimeUnprivileged(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running a server as another user needs root; as this user, the other tests of this file run the unprivileged path")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody to run the server as: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	base, err := os.MkdirTemp("", "dgn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	home := filepath.Join(base, "home")
	bin := filepath.Join(base, "devgpu")
	src, err := os.ReadFile(testutil.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	const planted = "planted-nobody-secret-77"
	environ := []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "AWS_SECRET_ACCESS_KEY=" + planted}
	asNobody := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.Env, cmd.Dir = environ, home
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		return cmd
	}
	addr := freeAddr(t)
	data := filepath.Join(home, "data")
	var log bytes.Buffer
	server := asNobody("server", "--dev", "--data", data, "--listen", addr, "--gpus", "t4:1")
	server.Stdout, server.Stderr = &log, &log
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = server.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = server.Process.Signal(syscall.SIGTERM)
		<-exited
		_ = exec.Command("pkill", "-KILL", "-f", "--", "--dir "+data+"/").Run()
		if t.Failed() {
			t.Logf("server log:\n%s", log.String())
		}
	})
	testutil.Eventually(t, testutil.WaitMedium, "the server to answer /healthz", func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	config := filepath.Join(home, ".config", "devgpu", "config.json")
	script := `id -u; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status
cat ` + filepath.Join(data, "devgpu.db") + ` >/dev/null 2>&1 && echo LEAK-store
cat ` + config + ` 2>/dev/null | grep -q token && echo LEAK-config
cat /proc/` + strconv.Itoa(server.Process.Pid) + `/environ 2>/dev/null | grep -aq ` + planted + ` && echo LEAK-server-environ
env | grep -q ` + planted + ` && echo LEAK-environ
touch "$HOME/mine" && echo HOME-WRITABLE`
	run := asNobody("run", "--", script)
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("devgpu run as nobody: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 3 || lines[0] != nobody.Uid || !strings.HasSuffix(lines[1], "0000000000000000") || !strings.HasSuffix(lines[2], "1") {
		t.Errorf("the session's user, capabilities and no_new_privs: %q", out)
	}
	if bytes.Contains(out, []byte("LEAK")) || !bytes.Contains(out, []byte("HOME-WRITABLE")) {
		t.Errorf("an unprivileged server's session:\n%s", out)
	}
	doctor, _ := asNobody("doctor").CombinedOutput()
	if !bytes.Contains(doctor, []byte("WARN")) || !bytes.Contains(doctor, []byte("not limited")) {
		t.Errorf("doctor does not warn that the sessions' processes are not limited:\n%s", doctor)
	}
}
