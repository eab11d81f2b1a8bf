package oci

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
)

// Sessions never get the whole host. All of them together get the host's
// share (hostShare): its CPUs, memory and tasks less a reserve for the host
// and the control plane, enforced on the parent cgroup /devgpu of every
// session (setParentLimits), and no one session's limit exceeds that share.
// The control plane's processes and each session's agent are also the
// OOM killer's last choices (oomScoreAdj).
const (
	// reserveMemoryMin and reserveMemoryFraction: the host keeps the larger.
	reserveMemoryMin      = 1 << 30
	reserveMemoryFraction = 0.10
	// reserveCPUMin and reserveCPUFraction: the host keeps the larger.
	reserveCPUMin      = 0.5
	reserveCPUFraction = 1.0 / 16
	// reserveTasksMin and reserveTasksFraction: of the kernel's limit on
	// tasks, the host keeps the larger.
	reserveTasksMin      = 1024
	reserveTasksFraction = 0.25
	// cfsPeriod is the CFS period of CPU quotas, in microseconds.
	cfsPeriod = 100000
)

// OOM scores (oom_score_adj, -1000..1000) of a session's processes: its
// agent, the container's init, is killed after what it started, which the
// agent raises to agent.ChildOOMScoreAdj.
const sessionAgentOOMScoreAdj = 500

// hostShare is what all sessions together may use of this host.
type hostShare struct {
	CPUs   float64
	Memory int64 // bytes
	Pids   int64
}

// sessionsShare is this host's share for sessions.
func sessionsShare() (hostShare, error) {
	mem, err := hostMemory()
	if err != nil {
		return hostShare{}, err
	}
	tasks, err := hostTasks()
	if err != nil {
		return hostShare{}, err
	}
	return shareOf(float64(goruntime.NumCPU()), mem, tasks), nil
}

// shareOf is the sessions' share of a host with these CPUs, bytes of
// memory and tasks.
func shareOf(cpus float64, mem, tasks int64) hostShare {
	cpuReserve := max(reserveCPUMin, cpus*reserveCPUFraction)
	memReserve := max(reserveMemoryMin, int64(float64(mem)*reserveMemoryFraction))
	taskReserve := max(reserveTasksMin, int64(float64(tasks)*reserveTasksFraction))
	return hostShare{
		// Whatever the reserve, sessions get at least a little of a tiny host.
		CPUs:   max(cpus-cpuReserve, cpus/2),
		Memory: max(mem-memReserve, mem/2),
		Pids:   max(tasks-taskReserve, tasks/2),
	}
}

// capped returns limits (DefaultLimits when nil) with every limit capped to
// the sessions' share of the host; a zero limit is the share.
func capped(limits map[string]Limits, share hostShare) map[string]Limits {
	if limits == nil {
		limits = DefaultLimits()
	}
	out := maps.Clone(limits)
	for k, l := range out {
		if l.CPUs <= 0 || l.CPUs > share.CPUs {
			l.CPUs = share.CPUs
		}
		if l.Memory <= 0 || l.Memory > share.Memory {
			l.Memory = share.Memory
		}
		if l.Pids <= 0 || l.Pids > share.Pids {
			l.Pids = share.Pids
		}
		out[k] = l
	}
	return out
}

// hostMemory is MemTotal from /proc/meminfo, in bytes.
func hostMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("host memory: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("host memory: no MemTotal in /proc/meminfo")
}

// hostTasks is how many tasks (processes and threads) the kernel allows in
// all: the smaller of kernel.pid_max and kernel.threads-max.
func hostTasks() (int64, error) {
	var n int64
	for _, f := range []string{"/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"} {
		v, err := readInt(f)
		if err != nil {
			return 0, fmt.Errorf("host tasks: %w", err)
		}
		if n == 0 || v < n {
			n = v
		}
	}
	return n, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// parentCgroup is the cgroup, below each controller's root, that holds
// every session of every oci runtime on this host (see cgroupPath).
const parentCgroup = "devgpu"

// setParentLimits bounds the sum of all sessions by the host's share: it
// creates the parent cgroup and sets its memory, pids and CPU limits, on
// cgroup v1 (one hierarchy per controller, as on hybrid hosts) or v2.
func setParentLimits(share hostShare) error {
	quota := strconv.FormatInt(int64(share.CPUs*cfsPeriod), 10)
	mem := strconv.FormatInt(share.Memory, 10)
	pids := strconv.FormatInt(share.Pids, 10)
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		dir := filepath.Join(cgroupRoot, parentCgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("session cgroup: %w", err)
		}
		if err := os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+cpu +memory +pids"), 0); err != nil {
			return fmt.Errorf("session cgroup: enable controllers: %w", err)
		}
		return writeCgroup(dir, map[string]string{
			"memory.max": mem, "pids.max": pids, "cpu.max": quota + " " + strconv.Itoa(cfsPeriod),
		})
	}
	for ctrl, files := range map[string]map[string]string{
		"memory": {"memory.limit_in_bytes": mem},
		"pids":   {"pids.max": pids},
		"cpu":    {"cpu.cfs_period_us": strconv.Itoa(cfsPeriod), "cpu.cfs_quota_us": quota},
	} {
		dir := filepath.Join(cgroupRoot, ctrl, parentCgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("session cgroup: %w", err)
		}
		if err := writeCgroup(dir, files); err != nil {
			return err
		}
	}
	return nil
}

func writeCgroup(dir string, files map[string]string) error {
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0); err != nil {
			return fmt.Errorf("session cgroup: set %s to %s: %w", filepath.Join(dir, name), v, err)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
