package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// unmountUnder unmounts everything mounted below dir, deepest first, so
// that a test's directory can be removed after its server stopped.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var targets []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			targets = append(targets, f[4])
		}
	}
	slices.SortFunc(targets, func(a, b string) int { return len(b) - len(a) })
	for _, t := range targets {
		_ = unix.Unmount(t, unix.MNT_DETACH)
	}
}

// hostDiskBytes is what the files under dir that lie on dir's own
// filesystem take, less the disk pool's image, which is allocated once.
func hostDiskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var root syscall.Stat_t
	if err := syscall.Stat(dir, &root); err != nil {
		t.Fatal(err)
	}
	var sum int64
	_ = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) != nil {
			return nil
		}
		if st.Dev != root.Dev {
			return fs.SkipDir
		}
		if filepath.Base(path) != "disk.img" {
			sum += st.Blocks * 512
		}
		return nil
	})
	return sum
}

// On the oci runtime, a session that writes past its writable layer's
// limit or its workspace's gets "No space left on device" and the host's
// disk does not grow; the control plane measures the full workspace at
// once and warns the next session, which can delete files to make room.
func TestOCIDiskLimits(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t) // writable_layer 256MB
	e.admin("project", "update", "default", "--egress", "none", "--workspace", "--workspace-limit", "64MB")
	data := filepath.Join(e.dir, "data")
	before := hostDiskBytes(t, data)

	r := e.cli("run", "--", "dd if=/dev/zero of=/root/big bs=1M count=512")
	if r.code == 0 || !strings.Contains(r.stderr, "No space left on device") {
		t.Fatalf("dd of 512 MB with a 256 MB writable layer: %+v; want No space left on device", r)
	}
	r = e.cli("run", "--", `dd if=/dev/zero of="$DEVGPU_WORKSPACE/big" bs=1M count=256`)
	if r.code == 0 || !strings.Contains(r.stderr, "No space left on device") {
		t.Fatalf("dd of 256 MB into a 64 MB workspace: %+v; want No space left on device", r)
	}
	if grew := hostDiskBytes(t, data) - before; grew > 16<<20 {
		t.Errorf("the host's disk under the data directory grew by %d bytes", grew)
	}

	// The next session hears that its workspace is full; its writes fail,
	// but it can delete files to make room.
	r = e.cli("run", "--", `echo ${DEVGPU_WORKSPACE_READONLY:-rw}; dd if=/dev/zero of="$DEVGPU_WORKSPACE/more" bs=1M count=8`)
	if r.code == 0 || r.stdout != "rw\n" || !strings.Contains(r.stderr, "your workspace in project default is full (its limit is 64 MB)") ||
		!strings.Contains(r.stderr, "No space left on device") {
		t.Fatalf("a session on a full workspace: %+v; want a warning, and writes failing with No space left on device", r)
	}
	r = e.cli("run", "--", `rm "$DEVGPU_WORKSPACE/big" "$DEVGPU_WORKSPACE/more" && echo x > "$DEVGPU_WORKSPACE/small" && cat "$DEVGPU_WORKSPACE/small"`)
	if r.code != 0 || r.stdout != "x\n" {
		t.Fatalf("making room in a full workspace: %+v", r)
	}
	if r = e.cli("run", "--", `cat "$DEVGPU_WORKSPACE/small"`); r.code != 0 || r.stdout != "x\n" || r.stderr != "" {
		t.Fatalf("a session on a workspace with room again: %+v; want no warning", r)
	}
}
