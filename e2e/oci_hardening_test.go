package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// A session on the oci runtime, through the real server and CLI: its root
// is an unprivileged host uid of its own range, it runs under Docker's
// default seccomp profile with the configured limits, what it starts is
// the OOM killer's first choice, its /sys shows only its own network, and
// nothing of the host's agent socket is in it. (Relaxing the seccomp
// profile is tested in internal/runtime/oci and internal/cli.)
func TestOCIHardening(t *testing.T) {
	t.Parallel()
	e, _ := newOCIEnv(t, `"limits": {"": {"memory": "300MB", "pids": 200}}`)
	e.admin("project", "update", "default", "--egress", "none")
	r := e.cli("run", "--", `cat /proc/self/uid_map; grep Seccomp: /proc/self/status; cat /proc/self/oom_score_adj; ls /sys/class/net; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; ls -a /.devgpu`)
	if r.code != 0 {
		t.Fatalf("run: %+v", r)
	}
	f := strings.Fields(r.stdout)
	want := []string{"0", "", "65536", "Seccomp:", "2", "1000", "lo", "", "200", ".", "..", "agent"}
	if len(f) != len(want) {
		t.Fatalf("session reports %q", r.stdout)
	}
	if host, err := strconv.ParseUint(f[1], 10, 32); err != nil || host < 1<<30 {
		t.Errorf("session root is host uid %s, want one of the sessions' ranges (1<<30 and up)", f[1])
	}
	if mem, err := strconv.ParseInt(f[7], 10, 64); err != nil || mem > 300e6 || mem < 299e6 {
		t.Errorf("memory limit %s, want the configured 300MB", f[7])
	}
	for i, w := range want {
		if w != "" && f[i] != w {
			t.Errorf("field %d of the session's report is %q, want %q:\n%s", i, f[i], w, r.stdout)
		}
	}
}
