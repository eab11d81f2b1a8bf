package inproc

import (
	"testing"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

// The same suite as the local runtime's pins this test runtime to the
// contract the control plane relies on.
func TestConformance(t *testing.T) {
	runtimetest.Run(t, runtimetest.HostOptions(), func(t *testing.T) runtimetest.Factory {
		reg := NewRegistry(testutil.ShortTempDir(t), runtimetest.HostDevices()...)
		return func() runtime.Runtime { return New(reg) }
	})
}
