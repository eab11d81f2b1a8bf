package local

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.Cleanup()
	os.Exit(code)
}

func newRuntime(t testing.TB, dir string) *Runtime {
	t.Helper()
	return newRuntimeConfig(t, Config{Dir: dir, Devices: runtimetest.HostDevices()})
}

func newRuntimeConfig(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	cfg.AgentCommand = []string{testutil.Binary(t), "agent"}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if rt.cg != nil {
			_ = os.Remove(rt.cg.parent) // fails while another runtime over the directory uses it
		}
	})
	return rt
}

func TestConformance(t *testing.T) {
	runtimetest.Run(t, runtimetest.HostOptions(), func(t *testing.T) runtimetest.Factory {
		dir := testutil.ShortTempDir(t)
		return func() runtime.Runtime {
			return newRuntimeConfig(t, Config{Dir: dir, Devices: runtimetest.HostDevices()})
		}
	})
}

// Stop must leave nothing behind: not the agent, not a shell's children,
// and not a process that left the session with setsid and an emptied
// environment (which once carried the only mark of the session).
func TestStopLeavesNoOrphans(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ctx := testutil.Context(t, testutil.WaitMedium)
	spec := runtime.Spec{SessionID: "orphans", User: "u", GPU: runtime.GPURequest{Type: "t4", Count: 1}, AgentSecret: "s3cret", IdleExit: time.Minute}
	if _, err := rt.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	marker := "devgpu-orphan-" + strconv.Itoa(os.Getpid())
	// One child in the group, one escaped into its own session with an
	// empty environment, one double-forked; all survive the command's exit.
	runtimetest.ExecOut(t, rt, spec, `sh -c 'sleep 1000; :' `+marker+`-a >/dev/null 2>&1 &
env -i setsid sh -c 'sleep 1000; :' `+marker+`-b </dev/null >/dev/null 2>&1 &
(env -i setsid sh -c '(sh -c "sleep 1000; :" `+marker+`-c &)' </dev/null >/dev/null 2>&1 &)`)
	agentPID := rt.agentPID(spec.SessionID)
	if agentPID == 0 {
		t.Fatal("no agent pid")
	}
	testutil.Eventually(t, testutil.WaitShort, "the three processes to run", func() bool { return len(hostPIDsWith(marker)) == 3 })
	if err := rt.Stop(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, testutil.WaitShort, "the agent to be gone", func() bool { return !alive(agentPID) })
	if pids := hostPIDsWith(marker); len(pids) > 0 {
		t.Fatalf("processes of the session outlived it: %v", pids)
	}
	if _, err := os.Stat(filepath.Join(rt.cfg.Dir, spec.SessionID)); !os.IsNotExist(err) {
		t.Fatalf("session directory left behind: %v", err)
	}
}

// hostPIDsWith scans the host's /proc for live processes whose command
// line holds marker.
func hostPIDsWith(marker string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), marker) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func alive(pid int) bool {
	return syscall.Kill(pid, 0) == nil && !isZombie(pid)
}

// Each session has its own workspace as working directory and HOME, and
// the control plane's own DEVGPU_ settings (its token) do not leak in.
func TestWorkspaceAndEnvironment(t *testing.T) {
	t.Setenv("DEVGPU_TOKEN", "dgp_must_not_leak")
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ctx := testutil.Context(t, testutil.WaitMedium)
	spec := runtime.Spec{SessionID: "wsenv", User: "u", GPU: runtime.GPURequest{Type: "t4", Count: 1}, AgentSecret: "x", IdleExit: time.Minute}
	if _, err := rt.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop(context.Background(), spec.SessionID)
	out := runtimetest.ExecOut(t, rt, spec, `echo "$PWD|$HOME|${DEVGPU_TOKEN:-unset}"`)
	ws := rt.HomeDir(spec.SessionID)
	if want := ws + "|" + ws + "|unset\n"; out != want {
		t.Fatalf("got %q, want %q", out, want)
	}
}

func TestRejectsBadIDs(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ctx := testutil.Context(t, testutil.WaitShort)
	for _, id := range []string{"", "../x", "A", strings.Repeat("a", 41)} {
		if _, err := rt.Start(ctx, runtime.Spec{SessionID: id}); err == nil {
			t.Errorf("Start(%q) succeeded", id)
		}
	}
}

// The workspace is a symlink in the session's home; Stop removes the link
// and never follows it into the workspace, whose files and directories stay.
func TestWorkspaceLinkSurvivesStop(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ws := t.TempDir()
	if err := os.MkdirAll(filepath.Join(ws, "sub", "deep"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "sub", "deep", "keep"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, testutil.WaitMedium)
	spec := runtime.Spec{SessionID: "wslink", User: "u", AgentSecret: "x", IdleExit: time.Minute,
		Workspace: ws, WorkspaceReadOnly: true}
	if _, err := rt.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop(context.Background(), spec.SessionID)
	link := filepath.Join(rt.HomeDir(spec.SessionID), "workspace")
	if target, err := os.Readlink(link); err != nil || target != ws {
		t.Fatalf("$HOME/workspace links to %q (%v), want %q", target, err, ws)
	}
	out := runtimetest.ExecOut(t, rt, spec, `echo "$DEVGPU_WORKSPACE|$DEVGPU_WORKSPACE_READONLY|$(cat "$HOME/workspace/sub/deep/keep")"`)
	if want := ws + "|1|kept\n"; out != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	if err := rt.Stop(ctx, spec.SessionID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(rt.dir(spec.SessionID)); !os.IsNotExist(err) {
		t.Fatalf("session directory left behind: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "sub", "deep", "keep")); err != nil || string(b) != "kept" {
		t.Fatalf("Stop reached into the workspace: %q, %v", b, err)
	}
}

// A workspace that is missing or not a directory fails the start, which
// leaves nothing behind and creates nothing.
func TestWorkspaceMustExist(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t, testutil.WaitShort)
	for _, ws := range []string{filepath.Join(dir, "missing"), file} {
		_, err := rt.Start(ctx, runtime.Spec{SessionID: "wsbad", AgentSecret: "x", Workspace: ws})
		if err == nil || !strings.Contains(err.Error(), ws) {
			_ = rt.Stop(context.Background(), "wsbad")
			t.Fatalf("Start with workspace %s: %v, want an error naming it", ws, err)
		}
		if _, err := os.Lstat(rt.dir("wsbad")); !os.IsNotExist(err) {
			t.Fatalf("failed start left its session directory: %v", err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Fatalf("the missing workspace was created: %v", err)
	}
}
