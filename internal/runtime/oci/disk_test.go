package oci

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

// requireDisk skips a test that needs root, mkfs.ext4 and loop devices
// where they are missing, except in CI, where it fails.
func requireDisk(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		missing = append(missing, "mkfs.ext4 (apt-get install e2fsprogs)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		missing = append(missing, "loop devices (/dev/loop-control)")
	}
	need(t, "disk limits need", missing)
}

const (
	testPool  = 1 << 30
	testLimit = 64 << 20
)

// unmountAtEnd unmounts target (lazily, should something still hold it)
// when the test ends.
func unmountAtEnd(t *testing.T, target string) {
	t.Cleanup(func() {
		for {
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return
			}
		}
	})
}

func openTestDisks(t *testing.T, stateDir string) *disks {
	t.Helper()
	d, err := openDisks(stateDir, DiskConfig{PoolSize: testPool, LayerLimits: map[string]int64{"": testLimit}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	unmountAtEnd(t, d.root)
	return d
}

// fill writes zeros to path until the write fails or max bytes are
// written, and returns how many it wrote and the error.
func fill(path string, max int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	var n int64
	for n < max {
		w, err := f.Write(buf)
		n += int64(w)
		if err != nil {
			f.Close()
			return n, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return n, err
	}
	return n, f.Close()
}

func statfsUsed(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func statfsSize(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// The pool takes its whole size on the host's disk once; a workspace is a
// filesystem of its limit in it, where writes past the limit fail with
// ENOSPC; usage comes from the filesystem however many files it holds; a
// larger limit grows it; releasing it unmounts it and keeps its files, and
// all of it comes back after the pool is unmounted (a reboot); a released
// layer gives its space back to the pool.
func TestDiskPool(t *testing.T) {
	requireDisk(t)
	t.Parallel()
	state := testutil.ShortTempDir(t)
	d := openTestDisks(t, state)
	img := filepath.Join(state, "disk.img")
	if got := allocated(t, img); got < testPool {
		t.Fatalf("pool image has %d bytes allocated on the host, want its whole size %d", got, testPool)
	}
	base := statfsUsed(t, d.root)

	ws := t.TempDir()
	unmountAtEnd(t, ws)
	if err := d.attachWorkspace("s1", ws, testLimit); err != nil {
		t.Fatal(err)
	}
	n, err := fill(filepath.Join(ws, "big"), 4*testLimit)
	if !errors.Is(err, syscall.ENOSPC) || n > testLimit {
		t.Fatalf("writing %d bytes into a workspace of %d: wrote %d, err %v; want ENOSPC before the limit", 4*testLimit, testLimit, n, err)
	}
	if err := os.Remove(filepath.Join(ws, "big")); err != nil {
		t.Fatal(err)
	}

	// Many small files: the filesystem's counters say what they take.
	for i := range 5000 {
		if err := os.WriteFile(filepath.Join(ws, "f"+strconv.Itoa(i)), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	used, err := d.workspaceUsage(ws)
	if err != nil {
		t.Fatal(err)
	}
	// What the files take, plus the filesystem's own metadata: what it
	// took when empty.
	walked, meta := du(t, ws), int64(testLimit)-statfsSize(t, ws)
	if used < walked+meta || used > walked+meta+2<<20 {
		t.Errorf("workspace usage %d bytes, want what its files take (%d) and its metadata (%d), within 2 MiB", used, walked, meta)
	}

	// A new limit waits while a session uses the workspace.
	capacity := statfsSize(t, ws)
	if err := d.attachWorkspace("s2", ws, 2*testLimit); err != nil {
		t.Fatal(err)
	}
	if got := statfsSize(t, ws); got != capacity {
		t.Fatalf("the workspace's size changed from %d to %d while in use", capacity, got)
	}

	// Released, it stays mounted: the host sees its files where they were.
	for _, id := range []string{"s1", "s2"} {
		if err := d.release(id, filepath.Join(state, "nolayer")); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(ws, "f42")); err != nil || string(b) != "x" {
		t.Fatalf("a workspace file on the host after its sessions: %q, %v", b, err)
	}

	// The next session's larger limit grows it.
	if err := d.attachWorkspace("s3", ws, 2*testLimit); err != nil {
		t.Fatal(err)
	}
	if n, err := fill(filepath.Join(ws, "big"), testLimit); err != nil {
		t.Fatalf("writing the old limit's worth after growing: %d bytes, %v", n, err)
	}
	if n, err := fill(filepath.Join(ws, "big2"), testLimit); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing past the grown limit: %d bytes, %v; want ENOSPC", n, err)
	}
	os.Remove(filepath.Join(ws, "big2"))
	if used, err = d.workspaceUsage(ws); err != nil {
		t.Fatal(err)
	}
	if err := d.release("s3", filepath.Join(state, "nolayer")); err != nil {
		t.Fatal(err)
	}

	// A reboot: nothing mounted. A new runtime mounts the pool and the
	// workspace again, with their files and limits.
	if err := unix.Unmount(ws, 0); err != nil {
		t.Fatal(err)
	}
	if !waitDetached(d.workspaceImage(ws)) {
		t.Fatal("the workspace's loop device stays after its unmount")
	}
	if err := unix.Unmount(d.root, 0); err != nil {
		t.Fatal(err)
	}
	d = openTestDisks(t, state)
	if b, err := os.ReadFile(filepath.Join(ws, "f42")); err != nil || string(b) != "x" {
		t.Errorf("a workspace file after a reboot: %q, %v", b, err)
	}
	if got, err := d.workspaceUsage(ws); err != nil || got != used {
		t.Errorf("usage after a reboot %d (%v), want %d", got, err, used)
	}
	// A smaller limit than what it holds leaves its size; once it holds
	// less, the smaller limit applies.
	if err := d.attachWorkspace("s4", ws, testLimit); err != nil {
		t.Fatal(err)
	}
	if got := statfsSize(t, ws); got <= testLimit {
		t.Errorf("a workspace holding more than its new limit shrank to %d bytes", got)
	}
	if err := os.Remove(filepath.Join(ws, "big")); err != nil {
		t.Fatal(err)
	}
	if err := d.release("s4", filepath.Join(state, "nolayer")); err != nil {
		t.Fatal(err)
	}
	if err := d.attachWorkspace("s5", ws, testLimit); err != nil {
		t.Fatal(err)
	}
	if got := statfsSize(t, ws); got > testLimit {
		t.Errorf("workspace of %d bytes, want it shrunk to at most %d", got, testLimit)
	}
	if n, err := fill(filepath.Join(ws, "big"), testLimit); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing past the shrunk limit: %d bytes, %v; want ENOSPC", n, err)
	}
	if err := d.release("s5", filepath.Join(state, "nolayer")); err != nil {
		t.Fatal(err)
	}

	// A writable layer takes its space from the pool and gives it back.
	layer := filepath.Join(state, "layer")
	if err := os.Mkdir(layer, 0o700); err != nil {
		t.Fatal(err)
	}
	unmountAtEnd(t, layer)
	before := statfsUsed(t, d.root)
	if err := d.mountLayer("l1", "t4", layer); err != nil {
		t.Fatal(err)
	}
	if n, err := fill(filepath.Join(layer, "big"), 4*testLimit); !errors.Is(err, syscall.ENOSPC) || n > testLimit {
		t.Fatalf("writing past the layer's limit: %d bytes, %v; want ENOSPC", n, err)
	}
	if grew := statfsUsed(t, d.root) - before; grew < testLimit/2 {
		t.Fatalf("the pool grew by %d bytes while the layer filled", grew)
	}
	if err := d.release("l1", layer); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.layerImage("l1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("layer image left after release: %v", err)
	}
	// The pool holds the workspace's image and nothing else, once the
	// loop device (which the kernel detaches in the background) lets go
	// of the removed layer image.
	testutil.Eventually(t, testutil.WaitShort, "the layer's space back in the pool", func() bool {
		after, wsImg := statfsUsed(t, d.root), allocated(t, d.workspaceImage(ws))
		return after <= base+wsImg+4<<20
	})
	if got := allocated(t, img); got < testPool || got > testPool+4<<20 {
		t.Errorf("pool image has %d bytes allocated on the host, want %d: sessions' writes never reach the host's disk", got, testPool)
	}
}

// A directory that holds files from before workspaces had limits is not
// hidden below a new, empty filesystem.
func TestDiskWorkspaceWithOldFiles(t *testing.T) {
	requireDisk(t)
	t.Parallel()
	d := openTestDisks(t, testutil.ShortTempDir(t))
	ws := t.TempDir()
	unmountAtEnd(t, ws)
	if err := os.WriteFile(filepath.Join(ws, "old"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := d.attachWorkspace("s1", ws, testLimit)
	if err == nil || !strings.Contains(err.Error(), "move them out") {
		t.Fatalf("attach a workspace with old files: %v, want an error saying to move them", err)
	}
	if src, _ := d.mountedImage(ws); src != "" {
		t.Fatalf("workspace mounted over old files (%s)", src)
	}
	if _, err := d.workspaceUsage(ws); err == nil {
		t.Fatal("usage of a workspace with old files: no error")
	}
}

// du adds up the blocks the files under dir take.
func du(t *testing.T, dir string) int64 {
	t.Helper()
	var sum int64
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		sum += st.Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func newDiskRuntime(t *testing.T, stateDir string) *Runtime {
	t.Helper()
	return newDiskRuntimeOf(t, stateDir, DiskConfig{PoolSize: testPool, LayerLimits: map[string]int64{"": testLimit}})
}

func newDiskRuntimeOf(t *testing.T, stateDir string, disk DiskConfig) *Runtime {
	t.Helper()
	rt, err := New(Config{
		StateDir: stateDir, AgentPath: testutil.StaticBinary(t), Images: &testImages, Image: "busybox",
		Limits: testLimits(), CDIDirs: []string{}, Disk: &disk, Devices: runtimetest.HostDevices(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Should a test fail with workspaces mounted, let go of them too.
	t.Cleanup(func() {
		recs, _ := filepath.Glob(filepath.Join(stateDir, "disk", "workspaces", "*.dir"))
		for _, rec := range recs {
			if b, err := os.ReadFile(rec); err == nil {
				_ = unix.Unmount(string(b), unix.MNT_DETACH)
			}
		}
	})
	unmountAtEnd(t, filepath.Join(stateDir, "disk"))
	return rt
}

// The runtime with disk limits passes the runtime conformance suite.
func TestConformanceDiskLimits(t *testing.T) {
	requireRunc(t)
	requireDisk(t)
	runtimetest.Run(t, runtimetest.HostOptions(), func(t *testing.T) runtimetest.Factory {
		dir := testutil.ShortTempDir(t)
		return func() runtime.Runtime {
			return newDiskRuntimeOf(t, dir, DiskConfig{PoolSize: minPool, LayerLimits: map[string]int64{"": 32 << 20}})
		}
	})
}

// hostBytes is what the files under dir that lie on dir's own filesystem
// (the host's disk, not the pool or a session's layer) take.
func hostBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var root unix.Stat_t
	if err := unix.Stat(dir, &root); err != nil {
		t.Fatal(err)
	}
	var sum int64
	_ = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(path, &st) != nil {
			return nil
		}
		if st.Dev != root.Dev {
			return fs.SkipDir
		}
		if path != filepath.Join(dir, "disk.img") {
			sum += st.Blocks * 512
		}
		return nil
	})
	return sum
}

// A session that writes past its writable layer's limit, into its
// workspace past the workspace's limit, or into its agent's log, gets
// "No space left on device", and the host's disk does not grow; the
// limits hold for a runtime started again over the same state; Stop
// gives the layer's space back.
func TestDiskLimitsInSession(t *testing.T) {
	requireRunc(t)
	requireDisk(t)
	t.Parallel()
	state := testutil.ShortTempDir(t)
	rt := newDiskRuntime(t, state)
	img := filepath.Join(state, "disk.img")
	imgBefore := allocated(t, img)
	poolBase := statfsUsed(t, filepath.Join(state, "disk"))
	ws := t.TempDir()
	unmountAtEnd(t, ws)

	s := runtimetest.StartSpec(t, rt, runtime.Spec{
		SessionID: fmt.Sprintf("disk-%d", time.Now().UnixNano()%1e9), Project: "p", User: "u", GPU: runtime.GPURequest{Type: "t4"},
		AgentSecret: "s3cret", IdleExit: time.Minute, Workspace: ws, WorkspaceLimitBytes: testLimit,
	})
	hostBefore := hostBytes(t, state)
	overfill := func(rt *Runtime, path string) {
		t.Helper()
		_, stderr, err := execErr(t, rt, s, "dd if=/dev/zero of="+path+" bs=1M count=256")
		if err == nil || !strings.Contains(stderr, "No space left on device") {
			t.Errorf("dd of 256 MiB to %s with a 64 MiB limit: %v, stderr %q; want No space left on device", path, err, stderr)
		}
	}
	overfill(rt, "/root/big")
	overfill(rt, "/workspace/big")
	if got := execOut(t, rt, s, "du -k /root/big /workspace/big | cut -f1"); !allBelow(got, testLimit>>10) {
		t.Errorf("sizes in KiB after the failed writes: %q, want each below %d", got, testLimit>>10)
	}
	// The agent's log is the host's file; the session can write it
	// through /proc/1/fd/2, and its layer's limit bounds that too.
	execOut(t, rt, s, "rm /root/big")
	if _, stderr, err := execErr(t, rt, s, "dd if=/dev/zero of=/proc/1/fd/2 bs=1M count=256"); err == nil ||
		!strings.Contains(stderr, "No space left on device") && !strings.Contains(stderr, "Permission denied") {
		t.Errorf("dd of 256 MiB into the agent's log: %v, stderr %q; want it refused or stopped at the layer's limit", err, stderr)
	}
	if grew := hostBytes(t, state) - hostBefore; grew > 4<<20 {
		t.Errorf("the host's disk under the state directory grew by %d bytes while the session wrote past its limits", grew)
	}
	if got := allocated(t, img); got != imgBefore {
		t.Errorf("the pool image's allocation went from %d to %d bytes", imgBefore, got)
	}

	// A control plane started again finds the limits in place, for the
	// running session and for a new one on the same workspace.
	again := newDiskRuntime(t, state)
	execOut(t, rt, s, "rm /workspace/big; echo kept > /workspace/kept")
	overfill(again, "/workspace/big")
	execOut(t, again, s, "rm /workspace/big")
	used, err := again.WorkspaceUsage(ws)
	if meta := int64(testLimit) - statfsSize(t, ws); err != nil || used < meta || used > meta+2<<20 {
		t.Errorf("workspace usage %d (%v), want its metadata (%d) and a small file", used, err, meta)
	}
	if err := again.Stop(testutil.Context(t, testutil.WaitMedium), s.SessionID); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "kept")); err != nil || string(b) != "kept\n" {
		t.Errorf("the workspace's file on the host after Stop: %q, %v", b, err)
	}
	// Only the workspace's image is left in the pool, once the loop device
	// (detached in the background) lets go of the removed layer image.
	testutil.Eventually(t, testutil.WaitShort, "the layer's space back in the pool", func() bool {
		grew := statfsUsed(t, filepath.Join(state, "disk")) - poolBase
		return grew <= allocated(t, again.disk.workspaceImage(ws))+4<<20
	})
	if _, err := os.Stat(filepath.Join(state, "disk", "layers", s.SessionID+".img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the session's layer image is left after Stop: %v", err)
	}

	s2 := runtimetest.StartSpec(t, again, runtime.Spec{
		SessionID: fmt.Sprintf("disk2-%d", time.Now().UnixNano()%1e9), Project: "p", User: "u", GPU: runtime.GPURequest{Type: "t4"},
		AgentSecret: "s3cret", IdleExit: time.Minute, Workspace: ws, WorkspaceLimitBytes: testLimit,
	})
	s = s2
	if got := execOut(t, again, s2, "cat /workspace/kept"); got != "kept\n" {
		t.Errorf("the workspace's file in the next session: %q", got)
	}
	overfill(again, "/workspace/big")
}

// allBelow reports whether every number in s is below max.
func allBelow(s string, max int64) bool {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return false
	}
	for _, f := range fields {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n >= max {
			return false
		}
	}
	return true
}

// A state directory and a workspace reached through symbolic links are
// recognised as the runtime's own (the kernel names them without links):
// a restart reuses the mounted pool, and a workspace is mounted once.
func TestDiskThroughLinks(t *testing.T) {
	requireDisk(t)
	t.Parallel()
	state := testutil.ShortTempDir(t)
	link := state + "-link"
	if err := os.Symlink(state, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	ws := t.TempDir()
	unmountAtEnd(t, ws)
	wsLink := filepath.Join(t.TempDir(), "ws")
	if err := os.Symlink(ws, wsLink); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"s1", "s2"} {
		d := openTestDisks(t, link)
		if err := d.attachWorkspace(id, wsLink, testLimit); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if used, err := d.workspaceUsage(wsLink); err != nil || used <= 0 || used >= testLimit {
			t.Errorf("start %d: usage %d, %v", i, used, err)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]int{filepath.Join(state, "disk"): 1, ws: 1} {
		if n := strings.Count(string(mounts), " "+target+" "); n != want {
			t.Errorf("%s is mounted %d times, want %d", target, n, want)
		}
	}
}
