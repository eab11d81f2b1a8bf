package oci

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.Cleanup()
	if testImages.dir != "" {
		os.RemoveAll(testImages.dir)
	}
	os.Exit(code)
}

// requireRunc skips a test that needs root, runc and busybox where they are
// missing, except in CI, where it fails.
func requireRunc(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc (apt-get install runc)")
	}
	if !staticBusybox() {
		missing = append(missing, "a static busybox (apt-get install busybox-static)")
	}
	need(t, "the oci runtime needs", missing)
}

// need skips the test when missing names anything, saying what it needs
// (what, then missing); in CI, where all must be there, it fails instead.
func need(t *testing.T, what string, missing []string) {
	t.Helper()
	if len(missing) == 0 {
		return
	}
	msg := what + " " + strings.Join(missing, ", ")
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// staticBusybox reports whether busybox is on $PATH and statically linked,
// so that it runs in an image that holds nothing else.
func staticBusybox() bool {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return false
	}
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// busyboxImages is an image store with one image, a busybox root
// filesystem built once per test process.
type busyboxImages struct {
	once sync.Once
	dir  string
	err  error
}

var testImages busyboxImages

func (b *busyboxImages) Rootfs(ctx context.Context, image string, _ func(done, total int64)) (string, error) {
	if image != "busybox" {
		return "", fmt.Errorf("no image %q", image)
	}
	b.once.Do(func() { b.dir, b.err = buildBusybox() })
	return b.dir, b.err
}

// buildBusybox makes a root filesystem of a static busybox, a link per
// applet and testdata/probe; TestMain removes it.
func buildBusybox() (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("/tmp", "dgimg")
	if err != nil {
		return "", err
	}
	for _, d := range []string{"bin", "etc", "root", "tmp", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return "", err
	}
	// probe tries the system calls a session must not have.
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "bin", "probe"), "./testdata/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build probe: %w\n%s", err, out)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return "", fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func testLimits() map[string]Limits {
	return map[string]Limits{"": {CPUs: 1, Memory: 256 << 20, Pids: 128}}
}

func newRuntime(t *testing.T, stateDir string) *Runtime {
	t.Helper()
	return newRuntimeWith(t, func(c *Config) { c.StateDir = stateDir })
}

// newRuntimeWith is newRuntime, in a new state directory, with the test
// configuration changed by edit.
func newRuntimeWith(t *testing.T, edit func(*Config)) *Runtime {
	t.Helper()
	cfg := Config{
		StateDir: testutil.ShortTempDir(t), AgentPath: testutil.StaticBinary(t), Images: &testImages, Image: "busybox",
		Limits: testLimits(), CDIDirs: []string{}, Devices: runtimetest.HostDevices(),
	}
	edit(&cfg)
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(rt.mountDir) }) // empty once its sessions stopped
	return rt
}

func TestConformance(t *testing.T) {
	requireRunc(t)
	runtimetest.Run(t, runtimetest.HostOptions(), func(t *testing.T) runtimetest.Factory {
		dir := testutil.ShortTempDir(t)
		return func() runtime.Runtime { return newRuntime(t, dir) }
	})
}

// start starts a session without GPUs.
func start(t *testing.T, rt *Runtime, prefix string) runtime.Spec {
	t.Helper()
	spec, _ := startGPUs(t, rt, prefix, 0)
	return spec
}

// startGPUs starts a session with n t4 GPUs and returns where it landed.
func startGPUs(t *testing.T, rt *Runtime, prefix string, n int) (runtime.Spec, runtime.Placement) {
	t.Helper()
	spec := runtime.Spec{
		SessionID: fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9), Project: "p", User: "u",
		GPU: runtime.GPURequest{Type: "t4", Region: "local", Count: n}, AgentSecret: "s3cret", IdleExit: time.Minute,
	}
	return spec, runtimetest.Place(t, rt, spec)
}

func execOut(t *testing.T, rt *Runtime, spec runtime.Spec, cmd string) string {
	t.Helper()
	return runtimetest.ExecOut(t, rt, spec, cmd)
}

func execErr(t *testing.T, rt *Runtime, spec runtime.Spec, cmd string) (stdout, stderr string, err error) {
	t.Helper()
	return runtimetest.Exec(t, rt, spec, cmd)
}

// One session sees neither another's processes nor its files, and is
// named after itself.
func TestIsolation(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	a := start(t, rt, "isoa")
	b := start(t, rt, "isob")
	execOut(t, rt, b, "echo secret > /root/b-file; sleep 1000 >/dev/null 2>&1 &")

	if got := execOut(t, rt, a, "hostname"); got != a.SessionID+"\n" {
		t.Errorf("hostname = %q, want %q", got, a.SessionID)
	}
	ps := execOut(t, rt, a, "ps -o pid,args")
	if !strings.Contains(ps, "--session "+a.SessionID) || strings.Contains(ps, b.SessionID) || strings.Contains(ps, "sleep 1000") {
		t.Errorf("session a's ps shows more than its own processes:\n%s", ps)
	}
	// The agent is pid 1 of its own pid namespace; a sees only it, its shell
	// and ps.
	pids := strings.Fields(execOut(t, rt, a, `ls /proc | grep -E '^[0-9]+$'`))
	if !slices.Contains(pids, "1") || len(pids) > 4 {
		t.Errorf("session a sees pids %v", pids)
	}
	if got := execOut(t, rt, a, "cat /root/b-file 2>&1; true"); strings.Contains(got, "secret") {
		t.Errorf("session a reads session b's file: %q", got)
	}
	// Only loopback in the default network namespace.
	if got := execOut(t, rt, a, "ls /sys/class/net"); strings.Fields(got)[0] != "lo" || len(strings.Fields(got)) != 1 {
		t.Errorf("network interfaces %q, want only lo", got)
	}
}

// The agent is the container's init: it reaps the orphans that the kernel
// reparents to it, while its own children keep their exit statuses.
func TestOrphansReaped(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	s := start(t, rt, "reap")
	for range 3 {
		if _, stderr, err := execErr(t, rt, s, "sleep 0.05 & sleep 0.05 & exit 7"); err == nil {
			t.Fatal("exit 7: exit status 0")
		} else if ee := (*ssh.ExitError)(nil); !errors.As(err, &ee) || ee.ExitStatus() != 7 {
			t.Fatalf("exit 7: %v (stderr %q)", err, stderr)
		}
	}
	// The orphans end within the first command; zombies would stay.
	zombies := `sleep 0.2; for f in /proc/[0-9]*/stat; do read -r pid comm state rest < "$f" && [ "$state" = Z ] && echo "$pid $comm"; done; true`
	testutil.Eventually(t, testutil.WaitShort, "no zombies in the session", func() bool {
		out := execOut(t, rt, s, zombies)
		if out != "" {
			t.Logf("zombies: %s", out)
		}
		return out == ""
	})
}

// The cgroup limits of the session's GPU type apply inside it.
func TestLimits(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	s := start(t, rt, "limits")
	out := execOut(t, rt, s, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us")
	if want := fmt.Sprintf("%d\n128\n100000\n", 256<<20); out != want {
		t.Errorf("cgroup limits inside = %q, want %q", out, want)
	}
}

// Each session gets exactly its GPUs' CDI device nodes.
func TestCDIDevices(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	a, pa := startGPUs(t, rt, "cdia", 2)
	b, pb := startGPUs(t, rt, "cdib", 1)
	none := start(t, rt, "cdinone")
	if !slices.Equal(pa.Devices, []string{"GPU-sim-t4-0", "GPU-sim-t4-1"}) || !slices.Equal(pb.Devices, []string{"GPU-sim-t4-2"}) {
		t.Fatalf("sessions placed on %v and %v, want the lowest free devices first", pa.Devices, pb.Devices)
	}
	for _, c := range []struct {
		spec runtime.Spec
		want string
	}{
		{a, "/dev/devgpu-GPU-sim-t4-0\n/dev/devgpu-GPU-sim-t4-1\n"},
		{b, "/dev/devgpu-GPU-sim-t4-2\n"},
		{none, ""},
	} {
		got := execOut(t, rt, c.spec, `for f in /dev/devgpu-*; do [ -c "$f" ] && echo "$f"; done; true`)
		if got != c.want {
			t.Errorf("session %s has GPU devices %q, want %q", c.spec.SessionID, got, c.want)
		}
	}
	// The device works (it is the null device) and nothing else was let in.
	if got := execOut(t, rt, a, "echo x > /dev/devgpu-GPU-sim-t4-0 && echo ok"); got != "ok\n" {
		t.Errorf("writing the device: %q", got)
	}

	// A GPU no CDI spec knows fails the start, which leaves no state and
	// gives the device back.
	bad := newRuntimeWith(t, func(c *Config) { c.Devices = []hostgpu.Device{{ID: "GPU-0000-not-here", Type: "x1", Region: "local"}} })
	_, err := bad.Start(testutil.Context(t, testutil.WaitMedium), runtime.Spec{SessionID: "cdibad", AgentSecret: "x", GPU: runtime.GPURequest{Type: "x1", Count: 1}})
	if err == nil || !strings.Contains(err.Error(), "GPU-0000-not-here") {
		_ = bad.Stop(context.Background(), "cdibad")
		t.Fatalf("a session with an unknown GPU: %v, want an error naming the device", err)
	}
	if _, serr := os.Stat(bad.dir("cdibad")); !os.IsNotExist(serr) {
		t.Errorf("failed start left state behind: %v", serr)
	}
	if held := bad.pool.Held("cdibad"); held != nil {
		t.Errorf("failed start still holds devices %v", held)
	}
}

// Stop kills every process of the session, escaped ones included, unmounts
// its overlay and removes its state; a new runtime can stop what an old one
// started.
func TestStopLeavesNothing(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	dir := testutil.ShortTempDir(t)
	rt := newRuntime(t, dir)
	s := start(t, rt, "stopall")
	execOut(t, rt, s, "sleep 1000 >/dev/null 2>&1 & setsid sleep 1001 >/dev/null 2>&1 &")
	procs := filepath.Join("/sys/fs/cgroup/pids", rt.cgroupPath(s.SessionID), "cgroup.procs")
	b, err := os.ReadFile(procs)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	if len(pids) < 3 {
		t.Fatalf("session's cgroup holds pids %v, want the agent and two sleeps", pids)
	}
	if mounted, err := isMounted(rt.rootfs(s.SessionID)); err != nil || !mounted {
		t.Fatalf("overlay not mounted: %v", err)
	}

	again := newRuntime(t, dir)
	if err := again.Stop(testutil.Context(t, testutil.WaitMedium), s.SessionID); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		testutil.Eventually(t, testutil.WaitShort, "pid "+strconv.Itoa(pid)+" to be gone", func() bool {
			return syscall.Kill(pid, 0) != nil || zombie(pid)
		})
	}
	if mounted, err := isMounted(rt.rootfs(s.SessionID)); err != nil || mounted {
		t.Fatalf("overlay still mounted after Stop (err %v)", err)
	}
	if _, err := os.Stat(rt.dir(s.SessionID)); !os.IsNotExist(err) {
		t.Fatalf("session state left behind: %v", err)
	}
	if _, err := os.Stat(rt.rootfs(s.SessionID)); !os.IsNotExist(err) {
		t.Fatalf("root filesystem's mount point left behind: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(procs)); !os.IsNotExist(err) {
		t.Fatalf("session cgroup left behind: %v", err)
	}
	if err := again.Stop(testutil.Context(t, testutil.WaitShort), "never-started"); err != nil {
		t.Fatalf("stopping a missing session: %v", err)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

func TestRejectsBadIDs(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ctx := testutil.Context(t, testutil.WaitShort)
	for _, id := range []string{"", "../x", "A", strings.Repeat("a", 41)} {
		if _, err := rt.Start(ctx, runtime.Spec{SessionID: id}); err == nil {
			t.Errorf("Start(%q) succeeded", id)
		}
	}
}

// The workspace is bind-mounted at /workspace, nosuid and nodev; read-only
// when asked, where writes fail. Stop leaves it, and what was written there,
// on the host.
func TestWorkspaceMount(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ws := t.TempDir()

	rw := runtime.Spec{SessionID: fmt.Sprintf("wsrw-%d", time.Now().UnixNano()%1e9), AgentSecret: "s3cret", IdleExit: time.Minute, Workspace: ws}
	ctx := testutil.Context(t, testutil.WaitMedium)
	if _, err := rt.Start(ctx, rw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Stop(context.Background(), rw.SessionID) })
	if got := execOut(t, rt, rw, `echo "$DEVGPU_WORKSPACE|${DEVGPU_WORKSPACE_READONLY:-unset}"; echo rw > /workspace/f`); got != "/workspace|unset\n" {
		t.Errorf("workspace environment %q", got)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "f")); err != nil || string(b) != "rw\n" {
		t.Fatalf("host sees %q (%v) of the session's write", b, err)
	}
	if opts := mountOptions(t, rt, rw, "/workspace"); !slices.Contains(opts, "rw") || !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("/workspace mounted with %v, want rw,nosuid,nodev", opts)
	}
	if err := rt.Stop(ctx, rw.SessionID); err != nil {
		t.Fatal(err)
	}

	ro := runtime.Spec{SessionID: fmt.Sprintf("wsro-%d", time.Now().UnixNano()%1e9), AgentSecret: "s3cret", IdleExit: time.Minute, Workspace: ws, WorkspaceReadOnly: true}
	if _, err := rt.Start(ctx, ro); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Stop(context.Background(), ro.SessionID) })
	if got := execOut(t, rt, ro, `echo "$DEVGPU_WORKSPACE_READONLY"; cat /workspace/f`); got != "1\nrw\n" {
		t.Errorf("read-only session got %q", got)
	}
	for _, cmd := range []string{"echo x > /workspace/f", "touch /workspace/g", "rm /workspace/f"} {
		_, stderr, err := execErr(t, rt, ro, cmd)
		if err == nil {
			t.Errorf("%q succeeded in a read-only workspace", cmd)
		} else if !strings.Contains(stderr, "Read-only file system") {
			t.Errorf("%q: %v, stderr %q, want a read-only file system", cmd, err, stderr)
		}
	}
	if opts := mountOptions(t, rt, ro, "/workspace"); !slices.Contains(opts, "ro") || !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("/workspace mounted with %v, want ro,nosuid,nodev", opts)
	}
	if err := rt.Stop(ctx, ro.SessionID); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(ws)
	if err != nil || len(entries) != 1 || entries[0].Name() != "f" {
		t.Fatalf("workspace after both sessions: %v (%v), want only f", entries, err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "f")); err != nil || string(b) != "rw\n" {
		t.Fatalf("workspace file after Stop: %q (%v)", b, err)
	}
	if mounted, err := isMounted(filepath.Join(rt.rootfs(ro.SessionID), "workspace")); err != nil || mounted {
		t.Fatalf("workspace mount left on the host (err %v)", err)
	}

	// A workspace that does not exist fails the start and is not created.
	missing := filepath.Join(ws, "missing")
	_, err = rt.Start(ctx, runtime.Spec{SessionID: "wsmissing", AgentSecret: "x", Workspace: missing})
	if err == nil || !strings.Contains(err.Error(), missing) {
		_ = rt.Stop(context.Background(), "wsmissing")
		t.Fatalf("Start with a missing workspace: %v, want an error naming it", err)
	}
	if _, err := os.Lstat(missing); !os.IsNotExist(err) {
		t.Fatalf("the missing workspace was created: %v", err)
	}
	if _, err := os.Lstat(rt.dir("wsmissing")); !os.IsNotExist(err) {
		t.Fatalf("failed start left state behind: %v", err)
	}
}

// mountOptions are the options of the mount at target inside the session,
// from /proc/mounts.
func mountOptions(t *testing.T, rt *Runtime, spec runtime.Spec, target string) []string {
	t.Helper()
	for _, line := range strings.Split(execOut(t, rt, spec, "cat /proc/mounts"), "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[1] == target {
			return strings.Split(f[3], ",")
		}
	}
	t.Fatalf("%s is not mounted in the session", target)
	return nil
}
