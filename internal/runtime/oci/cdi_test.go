package oci

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/devgpu/devgpu/internal/runtime"
)

// A spec as `nvidia-ctk cdi generate` writes it (trimmed): devices by
// index and UUID, and edits shared by all of them.
const nvidiaSpec = `---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
- name: GPU-2f8a0c3e-aaaa-bbbb-cccc-000000000000
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/null
- name: GPU-9d1e7b44-aaaa-bbbb-cccc-111111111111
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
      hostPath: /dev/zero
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: /dev/null
`

// Real GPUs come from the host's NVIDIA spec, simulated ones from the
// generated spec, through the same injection; a session gets exactly its
// devices (device nodes, or binds of the null device for simulated ones).
func TestInjectDevices(t *testing.T) {
	t.Parallel()
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "nvidia.yaml"), []byte(nvidiaSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	devs, err := newDevices([]string{hostDir}, filepath.Join(t.TempDir(), "cdi"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		gpus []string
		want []string
	}{
		{[]string{"GPU-9d1e7b44-aaaa-bbbb-cccc-111111111111"}, []string{"/dev/nvidia1", "/dev/nvidiactl"}},
		{[]string{"GPU-sim-t4-1", "GPU-sim-a100-0"}, []string{"/dev/devgpu-GPU-sim-a100-0", "/dev/devgpu-GPU-sim-t4-1"}},
		{nil, nil},
	} {
		s := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}
		if err := devs.inject(s, c.gpus); err != nil {
			t.Fatalf("inject %v: %v", c.gpus, err)
		}
		var got []string
		for _, d := range s.Linux.Devices {
			got = append(got, d.Path)
		}
		for _, m := range s.Mounts { // simulated GPUs: binds of /dev/null
			if strings.HasPrefix(m.Destination, "/dev/") {
				got = append(got, m.Destination)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("inject %v: device nodes %v, want %v", c.gpus, got, c.want)
		}
	}
	s := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}
	if err := devs.inject(s, []string{"GPU-0000-unknown"}); err == nil {
		t.Error("injecting an unknown GPU succeeded")
	}

	// The spec's NVIDIA_VISIBLE_DEVICES=void does not override the session
	// environment contract.
	rt := &Runtime{cfg: Config{StateDir: "/x", AgentPath: "/a"}, cdi: devs, limits: DefaultLimits()}
	uuid := "GPU-2f8a0c3e-aaaa-bbbb-cccc-000000000000"
	built, err := rt.buildSpec(runtime.Spec{SessionID: "s"}, []string{uuid}, "", DefaultIDMap.host(1))
	if err != nil {
		t.Fatal(err)
	}
	var visible []string
	for _, kv := range built.Process.Env {
		if strings.HasPrefix(kv, "NVIDIA_VISIBLE_DEVICES=") || strings.HasPrefix(kv, "CUDA_VISIBLE_DEVICES=") {
			visible = append(visible, kv)
		}
	}
	slices.Sort(visible)
	if want := []string{"CUDA_VISIBLE_DEVICES=" + uuid, "NVIDIA_VISIBLE_DEVICES=" + uuid}; !slices.Equal(visible, want) {
		t.Errorf("GPU environment %v, want %v", visible, want)
	}
}
