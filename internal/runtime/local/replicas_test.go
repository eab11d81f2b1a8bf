package local

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/testutil"
)

// Two runtimes over one directory (replicas of the server on one host,
// one reaching it through a link) never hand out the same device, and a
// device one of them frees is free for the other.
func TestRuntimesSharingADirectoryShareItsDevices(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	link := filepath.Join(testutil.ShortTempDir(t), "s")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	devs, err := hostgpu.Simulated("t4:2")
	if err != nil {
		t.Fatal(err)
	}
	a := newRuntimeConfig(t, Config{Dir: dir, Devices: devs})
	b := newRuntimeConfig(t, Config{Dir: link, Devices: devs})
	ctx := testutil.Context(t, testutil.WaitMedium)
	spec := func(id string) runtime.Spec {
		return runtime.Spec{SessionID: id, User: "u", GPU: runtime.GPURequest{Type: "t4", Count: 1}, AgentSecret: "s", IdleExit: time.Minute}
	}
	pa, err := a.Start(ctx, spec("sa"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop(context.Background(), "sa")
	pb, err := b.Start(ctx, spec("sb"))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(pa.Devices, pb.Devices) {
		t.Fatalf("both sessions hold %v", pa.Devices)
	}
	if _, err := a.Start(ctx, spec("sc")); err == nil {
		a.Stop(context.Background(), "sc")
		t.Fatal("a third device was handed out of two")
	}
	// b's session ends through a: its device is free for b again.
	if err := a.Stop(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	pd, err := b.Start(ctx, spec("sd"))
	if err != nil {
		t.Fatalf("the device a freed is not free for b: %v", err)
	}
	defer b.Stop(context.Background(), "sd")
	if !slices.Equal(pd.Devices, pb.Devices) {
		t.Errorf("b's new session holds %v, want the freed %v", pd.Devices, pb.Devices)
	}
	if a.cg != nil && a.cg.parent != b.cg.parent {
		t.Errorf("the runtimes name different cgroups for one directory: %s and %s", a.cg.parent, b.cg.parent)
	}
}
