package local

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

// probe runs a shell command in the session and reports whether it
// succeeded, with what it printed.
func probe(t *testing.T, rt *Runtime, spec runtime.Spec, cmd string) (string, bool) {
	t.Helper()
	out, stderr, err := runtimetest.Exec(t, rt, spec, cmd)
	return out + stderr, err == nil
}

// A hostile session tries to read what the control plane keeps from it:
// the store, the CLI config with its token, another session's agent
// directory (socket, pid file, log), the server's own environment through
// /proc, and its agent's memory; and to undo the masks.
func TestSandboxHidesSecrets(t *testing.T) {
	const planted = "planted-secret-c0ffee"
	t.Setenv("AWS_SECRET_ACCESS_KEY", planted) // the server's environment
	t.Setenv("DEVGPU_TOKEN", planted)

	// A data directory as the server lays it out, and a CLI config apart.
	data := testutil.ShortTempDir(t)
	store := filepath.Join(data, "devgpu.db")
	if err := os.WriteFile(store, []byte(planted), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgDir := t.TempDir()
	cfgFile := filepath.Join(cfgDir, "config.json")
	if err := os.WriteFile(cfgFile, []byte(`{"token":"`+planted+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	lone := filepath.Join(t.TempDir(), "server.json") // a file hidden on its own
	if err := os.WriteFile(lone, []byte(planted), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := newRuntimeConfig(t, Config{Dir: filepath.Join(data, "sessions"), Hide: []string{data, cfgDir, lone}})
	ctx := testutil.Context(t, testutil.WaitMedium)
	other := runtime.Spec{SessionID: "victim", User: "v", AgentSecret: planted, IdleExit: time.Minute}
	if _, err := rt.Start(ctx, other); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop(context.Background(), other.SessionID)
	spec := runtime.Spec{SessionID: "attacker", User: "a", AgentSecret: "mine", IdleExit: time.Minute}
	if _, err := rt.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop(context.Background(), spec.SessionID)

	victimDir := rt.dir(other.SessionID)
	for _, tc := range []struct{ name, cmd string }{
		{"read the store", "cat " + store},
		{"list the data directory", "ls -A " + data + " | grep -v sessions | grep ."},
		{"read the CLI config", "cat " + cfgFile},
		{"read a hidden file", "cat " + lone + " | grep ."},
		{"list another session's directory", "ls -A " + victimDir + " | grep ."},
		{"read another session's log", "cat " + filepath.Join(victimDir, "agent.log")},
		{"find the other agent's socket", "test -S " + filepath.Join(victimDir, "agent.sock")},
		{"read the server's environment", "cat /proc/" + strconv.Itoa(os.Getpid()) + "/environ"},
		{"find the planted variable in any process", "grep -l " + planted + " /proc/*/environ 2>/dev/null | grep ."},
		{"read the agent's environment", "cat /proc/1/environ"},
		{"read the agent's memory", "head -c1 /proc/1/mem"},
		{"unmount the mask", "umount " + data + " && cat " + store},
		{"unmount the mask in a new user namespace", "unshare -Urm sh -c 'umount -l " + data + " && cat " + store + "'"},
		{"write into the mask", "touch " + filepath.Join(data, "x")},
		{"change the session's cgroup", "ls /sys/fs/cgroup | grep ."},
	} {
		if out, ok := probe(t, rt, spec, tc.cmd); ok || strings.Contains(out, planted) {
			t.Errorf("a session could %s: %q", tc.name, out)
		}
	}
	// What the session should have still works.
	ps := runtimetest.ExecOut(t, rt, spec, `echo hi > "$HOME/f" && cat "$HOME/f" && cd .. && pwd && ls /proc | grep -c '^[0-9]'`)
	lines := strings.Fields(ps)
	if len(lines) != 3 || lines[0] != "hi" || lines[1] != rt.dir(spec.SessionID) {
		t.Fatalf("home in the sandbox: %q", ps)
	}
	if n, _ := strconv.Atoi(lines[2]); n == 0 || n > 10 {
		t.Errorf("the session's /proc shows %d processes, want only its own few", n)
	}
	if out, ok := probe(t, rt, spec, "ls -A .. | grep -vx home"); ok {
		t.Errorf("the session's directory shows more than its home: %q", out)
	}
}

// A session's environment is the contract's variables and a few harmless
// ones of the server's, nothing else.
func TestSessionEnvironmentIsMinimal(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ctx := testutil.Context(t, testutil.WaitMedium)
	spec := runtime.Spec{SessionID: "envmin", User: "u", GPU: runtime.GPURequest{Type: "t4", Count: 1}, AgentSecret: "x", IdleExit: time.Minute}
	pl, err := rt.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Stop(context.Background(), spec.SessionID)
	// The environment a command of the session starts with, from the
	// agent's environment plus the variables the agent sets per request.
	out := runtimetest.ExecOut(t, rt, spec, `env -0 | tr '\0' '\n' | cut -d= -f1 | sort -u`)
	allowed := append(slices.Clone(passedEnv), "HOME", "PWD", "SHLVL", "_", "OLDPWD")
	for k := range runtime.SessionEnv(spec, pl.Devices) {
		allowed = append(allowed, k)
	}
	for _, name := range strings.Fields(out) {
		if !slices.Contains(allowed, name) {
			t.Errorf("the session's environment has %s", name)
		}
	}
}

// A read-only workspace is read-only in the session.
func TestReadOnlyWorkspace(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ws := t.TempDir()
	ctx := testutil.Context(t, testutil.WaitMedium)
	for _, ro := range []bool{true, false} {
		spec := runtime.Spec{SessionID: "wsro-" + strconv.FormatBool(ro), User: "u", AgentSecret: "x", IdleExit: time.Minute,
			Workspace: ws, WorkspaceReadOnly: ro}
		if _, err := rt.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		_, ok := probe(t, rt, spec, `touch "$HOME/workspace/f-`+strconv.FormatBool(ro)+`"`)
		if ok == ro {
			t.Errorf("read-only %v: writing into the workspace succeeded: %v", ro, ok)
		}
		if err := rt.Stop(ctx, spec.SessionID); err != nil {
			t.Fatal(err)
		}
	}
}

// A fork bomb in a session stops at the session's pids limit, the runtime
// still stops the session and everything in it, and the host can still
// start another session.
func TestForkBombContained(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	if rt.cg == nil {
		if os.Getuid() == 0 {
			t.Fatalf("running as root, the local runtime has no pids cgroup: %v", rt.Warnings())
		}
		t.Skip("the pids cgroup is writable only for root: " + strings.Join(rt.Warnings(), "; "))
	}
	const limit, bound = 64, 500
	rt.cfg.MaxPids = limit
	ctx := testutil.Context(t, testutil.WaitLong)
	spec := runtime.Spec{SessionID: "forkbomb", User: "u", AgentSecret: "x", IdleExit: time.Minute}
	if _, err := rt.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop(context.Background(), spec.SessionID)
	marker := "devgpu-bomb-" + strconv.Itoa(os.Getpid())
	// Fork until fork fails (the shell gives up then), at most bound times
	// so that the test cannot take the host down where nothing limits it.
	// dash (sh) gives up at the first fork that fails.
	out, _ := probe(t, rt, spec, `sh -c 'n=0; while [ $n -lt `+strconv.Itoa(bound)+` ]; do sh -c "sleep 1000; :" `+marker+` & n=$((n+1)); echo $n > "$HOME/n"; done'`)
	b, err := os.ReadFile(filepath.Join(rt.HomeDir(spec.SessionID), "n"))
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n >= bound {
		t.Fatalf("the session forked %d times (%v; %q), want it stopped by its limit of %d processes", n, err, out, limit)
	}
	if live := len(hostPIDsWith(marker)); live > limit {
		t.Fatalf("%d processes of the bomb run, more than the session's limit of %d", live, limit)
	}
	second := runtime.Spec{SessionID: "afterbomb", User: "u", AgentSecret: "x", IdleExit: time.Minute}
	if _, err := rt.Start(ctx, second); err != nil {
		t.Fatalf("start a session beside the bomb: %v", err)
	}
	defer rt.Stop(context.Background(), second.SessionID)
	if got := runtimetest.ExecOut(t, rt, second, "echo ok"); got != "ok\n" {
		t.Fatalf("session beside the bomb: %q", got)
	}
	if err := rt.Stop(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	if pids := hostPIDsWith(marker); len(pids) > 0 {
		t.Fatalf("%d processes of the bomb outlived its session", len(pids))
	}
	if _, err := os.Stat(rt.cg.dir(spec.SessionID)); !os.IsNotExist(err) {
		t.Fatalf("the session's cgroup is left: %v", err)
	}
}

// A session cgroup whose session directory is gone (its data went without
// a Stop) is removed, with what runs in it, when a runtime over the
// directory starts.
func TestStaleCgroupsSwept(t *testing.T) {
	t.Parallel()
	dir := testutil.ShortTempDir(t)
	rt := newRuntime(t, dir)
	if rt.cg == nil {
		if os.Getuid() == 0 {
			t.Fatalf("running as root, the local runtime has no pids cgroup: %v", rt.Warnings())
		}
		t.Skip("the pids cgroup is writable only for root")
	}
	if err := rt.cg.create("stale", 10); err != nil {
		t.Fatal(err)
	}
	newRuntime(t, dir)
	if _, err := os.Stat(rt.cg.dir("stale")); !os.IsNotExist(err) {
		t.Fatalf("the stale session's cgroup is left: %v", err)
	}
}
