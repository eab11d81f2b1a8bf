package oci

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/devgpu/devgpu/internal/runtime"
)

// Limits are a session's cgroup limits. Zero, or more than the sessions'
// share of the host (see hostShare), is that share.
type Limits struct {
	CPUs   float64 // vCPUs, as a CFS quota
	Memory int64   // bytes
	Pids   int64
}

const gib = 1 << 30

// DefaultLimits mirror the seed's cloud shapes: a T4 comes with 8 vCPUs and
// 56 GiB, an A100 with 24 vCPUs and 220 GiB. Other types get the "" entry,
// the T4's shape.
func DefaultLimits() map[string]Limits {
	return map[string]Limits{
		"":     {CPUs: 8, Memory: 56 * gib, Pids: 4096},
		"t4":   {CPUs: 8, Memory: 56 * gib, Pids: 4096},
		"a100": {CPUs: 24, Memory: 220 * gib, Pids: 8192},
	}
}

// limitsFor returns the limits of a GPU type.
func (r *Runtime) limitsFor(gpuType string) Limits {
	if l, ok := r.limits[gpuType]; ok {
		return l
	}
	return r.limits[""]
}

// buildSpec is the session's container spec with its GPUs, devices,
// injected through CDI. CDI edits may set environment variables of the contract
// (nvidia-ctk's specs set NVIDIA_VISIBLE_DEVICES=void, so that the NVIDIA
// hook does not inject devices a second time); the contract wins.
func (r *Runtime) buildSpec(spec runtime.Spec, devices []string, netns string, rootID uint32) (*specs.Spec, error) {
	s := r.containerSpec(spec, devices, netns, rootID)
	if err := r.cdi.inject(s, devices); err != nil {
		return nil, err
	}
	sc, err := r.seccomp.filter(s)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	s.Linux.Seccomp = sc
	env := sessionEnv(spec, devices)
	s.Process.Env = slices.DeleteFunc(s.Process.Env, func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		_, ours := env[k]
		return ours
	})
	for _, k := range slices.Sorted(maps.Keys(env)) {
		s.Process.Env = append(s.Process.Env, k+"="+env[k])
	}
	return s, nil
}

// containerSpec is `runc spec`'s template (capabilities, masked and
// read-only paths, mounts, namespaces) made into a session: a writable
// overlay root (where Start mounted the agent and the workspace), the
// agent as the process, the session
// environment, its hostname and cgroup limits, in a user namespace whose
// root is host id rootID (see userns.go). netns, when set, is the network
// namespace to join instead of a new one.
func (r *Runtime) containerSpec(spec runtime.Spec, devices []string, netns string, rootID uint32) *specs.Spec {
	id := spec.SessionID
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + homeInContainer,
		"TERM=xterm",
	}
	senv := sessionEnv(spec, devices)
	for _, k := range slices.Sorted(maps.Keys(senv)) {
		env = append(env, k+"="+senv[k])
	}
	l := r.limitsFor(spec.GPU.Type)
	res := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if l.Memory > 0 {
		res.Memory = &specs.LinuxMemory{Limit: &l.Memory}
	}
	if l.CPUs > 0 {
		period := uint64(100000)
		quota := int64(l.CPUs * float64(period))
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if l.Pids > 0 {
		res.Pids = &specs.LinuxPids{Limit: &l.Pids}
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
	if netns == "" {
		// In a network namespace made beforehand, Start mounted /sys.
		mounts = slices.Insert(mounts, 5, specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
	}
	return &specs.Spec{
		Version: "1.0.2-dev",
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: []string{agentInContainer, "agent",
				"--session", id, "--listen-fd", strconv.Itoa(listenFD), "--dir", homeInContainer,
				"--idle-exit", spec.IdleExit.String()},
			Env: env,
			Cwd: homeInContainer,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps, Ambient: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
			OOMScoreAdj:     ptr(sessionAgentOOMScoreAdj),
		},
		Root:     &specs.Root{Path: r.rootfs(id)},
		Hostname: id,
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: r.cgroupPath(id),
			Resources:   res,
			UIDMappings: idMapping(0, rootID),
			GIDMappings: idMapping(0, rootID),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.UserNamespace},
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: netns},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// sessionEnv is the session's environment contract for its devices and,
// with a workspace, where it is mounted; the runtime's word on its
// workspace wins over spec.Env.
func sessionEnv(spec runtime.Spec, devices []string) map[string]string {
	env := runtime.SessionEnv(spec, devices)
	if spec.Workspace != "" {
		env["DEVGPU_WORKSPACE"] = workspaceInContainer
		delete(env, "DEVGPU_WORKSPACE_READONLY")
		if spec.WorkspaceReadOnly {
			env["DEVGPU_WORKSPACE_READONLY"] = "1"
		}
	}
	return env
}

// cgroupPath is the session's cgroup below each controller's root: one
// flat /devgpu parent, so that no per-runtime directory is left behind, and
// the runtime's tag, so that runtimes over different state directories
// never share one.
func (r *Runtime) cgroupPath(id string) string { return "/" + parentCgroup + "/" + r.tag + "-" + id }
