package oci

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/devgpu/devgpu/internal/gpu"
)

const (
	// nvidiaKind is the CDI kind `nvidia-ctk cdi generate` writes, with
	// devices named by index, UUID and "all".
	nvidiaKind = "nvidia.com/gpu"
	// simKind is the kind of simulated GPUs, whose spec this runtime
	// generates so that they take the same path as real ones.
	simKind = "devgpu.dev/gpu"
	// simSpecName is the generated spec's file name in the runtime's CDI dir.
	simSpecName = "devgpu.dev-gpu.json"
)

// devices injects a session's GPUs into its OCI spec through CDI: a GPU
// named by its UUID becomes nvidia.com/gpu=<uuid> from the host's NVIDIA
// spec, a simulated one devgpu.dev/gpu=<id> from the spec this runtime
// writes into its own CDI dir.
type devices struct {
	cache  *cdi.Cache
	simDir string

	mu sync.Mutex // guards the generated spec
}

func newDevices(dirs []string, simDir string) (*devices, error) {
	if dirs == nil {
		dirs = []string{cdi.DefaultStaticDir, cdi.DefaultDynamicDir}
	}
	if err := os.MkdirAll(simDir, 0o700); err != nil {
		return nil, fmt.Errorf("cdi: %w", err)
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(append(slices.Clone(dirs), simDir)...), cdi.WithAutoRefresh(false))
	if err != nil {
		// Errors here are about individual spec dirs or files (a missing
		// /etc/cdi, say); the cache still serves the rest.
		if cache == nil {
			return nil, fmt.Errorf("cdi: %w", err)
		}
	}
	return &devices{cache: cache, simDir: simDir}, nil
}

// qualified is the CDI name of a GPU id.
func qualified(id string) string {
	if gpu.Simulated(id) {
		return simKind + "=" + id
	}
	return nvidiaKind + "=" + id
}

// inject adds exactly the given GPUs, with their device nodes, mounts, env
// and hooks, to s.
func (d *devices) inject(s *specs.Spec, gpus []string) error {
	if len(gpus) == 0 {
		return nil
	}
	if err := d.ensureSimulated(gpus); err != nil {
		return err
	}
	// Specs change under us (a new simulated device, nvidia-ctk run again
	// after a driver update), so read them afresh; it is a few small files.
	_ = d.cache.Refresh()
	names := make([]string, len(gpus))
	for i, g := range gpus {
		names[i] = qualified(g)
	}
	if _, err := d.cache.InjectDevices(s, names...); err != nil {
		return fmt.Errorf("inject GPUs %s: %w", strings.Join(gpus, ","), err)
	}
	return nil
}

// ensureSimulated (re)writes the generated spec so that it holds every
// simulated GPU among gpus. Each is a harmless character device, the null
// device, at /dev/devgpu-<id>, which lets a session see which GPUs it got.
// It is a bind mount of the host's /dev/null rather than a device node:
// sessions run in user namespaces, where runc can only bind device nodes,
// from the same path on the host (as real GPUs' /dev/nvidia* are).
func (d *devices) ensureSimulated(gpus []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// The file, not memory, is the truth: another runtime over the same
	// state directory may have added devices.
	var sim []string
	added := false
	if spec, err := cdi.ReadSpec(filepath.Join(d.simDir, simSpecName), 0); err == nil {
		for _, dev := range spec.Devices {
			sim = append(sim, dev.Name)
			// An earlier version's device node: rewrite.
			added = added || len(dev.ContainerEdits.DeviceNodes) > 0
		}
	}
	for _, g := range gpus {
		if gpu.Simulated(g) && !slices.Contains(sim, g) {
			sim = append(sim, g)
			added = true
		}
	}
	if !added {
		return nil
	}
	raw := &cdispec.Spec{Kind: simKind}
	for _, id := range sim {
		raw.Devices = append(raw.Devices, cdispec.Device{
			Name: id,
			ContainerEdits: cdispec.ContainerEdits{
				Mounts: []*cdispec.Mount{{
					HostPath: "/dev/null", ContainerPath: "/dev/devgpu-" + id,
					Options: []string{"bind", "nosuid", "noexec"},
				}},
			},
		})
	}
	version, err := cdi.MinimumRequiredVersion(raw)
	if err != nil {
		return fmt.Errorf("cdi: %w", err)
	}
	raw.Version = version
	if err := d.cache.WriteSpec(raw, simSpecName); err != nil {
		return fmt.Errorf("cdi: write the spec of simulated GPUs: %w", err)
	}
	return nil
}
