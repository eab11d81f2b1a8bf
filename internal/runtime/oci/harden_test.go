package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

// hostSocket listens on a unix socket at path, non-blocking, so that
// accepted reports at once whether anyone connected.
func hostSocket(t *testing.T, path string) (accepted func() bool) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	return func() bool {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err == nil {
			unix.Close(nfd)
			return true
		}
		if err != unix.EAGAIN {
			t.Fatalf("accept on the host socket: %v", err)
		}
		return false
	}
}

// A session that replaces every unix socket it can see (the agent's
// socket included, wherever it is) with a link to another socket of the
// host cannot make the control plane dial that socket: the host dials only
// the socket it made, in a directory no session reaches.
func TestSessionCannotRedirectAgentSocket(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	s := start(t, rt, "redirect")
	victim := filepath.Join(testutil.ShortTempDir(t), "victim.sock")
	accepted := hostSocket(t, victim)

	// The old layout's socket, and any other socket the session can see.
	attack := `for s in /.devgpu/run/agent.sock $(find / \( -path /proc -o -path /sys \) -prune -o -type s -print 2>/dev/null); do
		rm -f "$s" && ln -s ` + victim + ` "$s" && echo "replaced $s"
	done; true`
	t.Logf("attack: %s", strings.TrimSpace(execOut(t, rt, s, attack)))

	ctx := testutil.Context(t, testutil.WaitShort)
	conn, err := rt.Connect(ctx, s.SessionID)
	if err == nil {
		_, _ = conn.Write([]byte("bytes a user sent to the session\n"))
		conn.Close()
	}
	if accepted() {
		t.Fatal("the runtime dialled a host socket that the session linked in place of its agent's")
	}
	// The session is still reachable, through its real agent.
	if got := execOut(t, rt, s, "echo still here"); got != "still here\n" {
		t.Fatalf("after the attack the agent answers %q", got)
	}
}

// probeWant is what testdata/probe prints in a session under Docker's
// default seccomp profile: every call refused with EPERM.
const probeWant = "userns EPERM\nunshare-mnt EPERM\nkeyctl EPERM\nadd_key EPERM\nio_uring_setup EPERM\nbpf EPERM\nmount EPERM\n"

// Every session runs under Docker's default seccomp profile: no new user
// or mount namespaces, no keyrings, io_uring, bpf or mount.
func TestSeccompDefault(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	s := start(t, rt, "seccomp")
	if got := execOut(t, rt, s, "grep Seccomp: /proc/self/status"); !strings.Contains(got, "2") {
		t.Errorf("session's seccomp mode %q, want 2 (filter)", got)
	}
	if got := execOut(t, rt, s, "probe"); got != probeWant {
		t.Errorf("system calls in a session:\n%s\nwant:\n%s", got, probeWant)
	}
}

// An admin can relax the profile: a custom profile in Docker's JSON format
// (here the default plus keyctl), or none at all.
func TestSeccompConfigurable(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	def, err := json.Marshal(seccomp.DefaultProfile())
	if err != nil {
		t.Fatal(err)
	}
	var p seccomp.Seccomp
	if err := json.Unmarshal(def, &p); err != nil {
		t.Fatal(err)
	}
	p.Syscalls = append(p.Syscalls, &seccomp.Syscall{LinuxSyscall: specs.LinuxSyscall{Names: []string{"keyctl"}, Action: specs.ActAllow}})
	b, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "profile.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	custom := newRuntimeWith(t, func(c *Config) { c.Seccomp = path })
	s := start(t, custom, "sccustom")
	if got, want := execOut(t, custom, s, "probe keyctl add_key"), "keyctl ok\nadd_key EPERM\n"; got != want {
		t.Errorf("custom profile: %q, want %q", got, want)
	}

	none := newRuntimeWith(t, func(c *Config) { c.Seccomp = SeccompUnconfined })
	s = start(t, none, "scnone")
	if got := execOut(t, none, s, "grep Seccomp: /proc/self/status"); !strings.Contains(got, "0") {
		t.Errorf("unconfined session's seccomp mode %q, want 0", got)
	}

	// A profile that is not one fails New, saying what it needs.
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{StateDir: testutil.ShortTempDir(t), AgentPath: testutil.StaticBinary(t), Images: &testImages, Seccomp: path})
	if err == nil || !strings.Contains(err.Error(), "Docker's JSON format") {
		t.Errorf("New with a broken profile: %v", err)
	}
}

// No session, and not all sessions together, can take the whole host:
// neither by default, nor unlimited (zero), nor with limits larger than
// the host; the host keeps a reserve of CPU, memory and tasks.
func TestLimitsNeverTheWholeHost(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	mem, err := hostMemory()
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := hostTasks()
	if err != nil {
		t.Fatal(err)
	}
	cpus := float64(goruntime.NumCPU())
	for _, limits := range []map[string]Limits{
		nil, // DefaultLimits
		{"": {}},
		{"": {CPUs: 1e6, Memory: 1 << 60, Pids: 1 << 40}},
	} {
		rt := newRuntimeWith(t, func(c *Config) { c.Limits = limits })
		for _, typ := range []string{"", "t4", "a100"} {
			l := rt.limitsFor(typ)
			if l.CPUs <= 0 || l.CPUs >= cpus || l.Memory <= 0 || l.Memory >= mem || l.Pids <= 0 || l.Pids >= tasks {
				t.Errorf("limits %v: type %q gets %+v of a host with %v CPUs, %d bytes and %d tasks", limits, typ, l, cpus, mem, tasks)
			}
		}
	}
	// Small limits stay as they are; unlisted types get the "" entry.
	rt := newRuntimeWith(t, func(c *Config) {
		c.Limits = map[string]Limits{"": {Pids: 10}, "small": {CPUs: 0.5, Memory: 1 << 20, Pids: 5}}
	})
	if l := rt.limitsFor("small"); l != (Limits{CPUs: 0.5, Memory: 1 << 20, Pids: 5}) {
		t.Errorf("small limits changed: %+v", l)
	}
	if l := rt.limitsFor("unlisted"); l.Pids != 10 {
		t.Errorf("unlisted type did not get the default: %+v", l)
	}

	// The parent cgroup of every session bounds their sum.
	for file, whole := range map[string]int64{
		"memory/devgpu/memory.limit_in_bytes": mem,
		"pids/devgpu/pids.max":                tasks,
		"cpu/devgpu/cpu.cfs_quota_us":         int64(cpus * 100000),
	} {
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", file))
		if err != nil {
			t.Errorf("sessions' parent cgroup: %v", err)
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || v <= 0 || v >= whole {
			t.Errorf("%s = %q, want a limit below the host's %d", file, b, whole)
		}
	}
}

// A memory hog in a session is what the OOM killer takes, not the agent,
// which keeps serving: what the agent starts is the OOM killer's first
// choice, the agent its last in the session.
func TestMemoryHogKilledAgentServes(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	s := start(t, rt, "oom")
	if got, want := execOut(t, rt, s, "cat /proc/self/oom_score_adj"), "1000\n"; got != want {
		t.Errorf("oom_score_adj of a command %q, want %q", got, want)
	}
	// The agent's, read from the host once the command's start is over
	// (the agent raises its own score while it starts a child).
	cs, err := rt.containers(testutil.Context(t, testutil.WaitShort))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.ID == s.SessionID {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", c.Pid)); err != nil || string(b) != "500\n" {
				t.Errorf("the agent's oom_score_adj %q (%v), want 500", b, err)
			}
		}
	}
	_, stderr, err := execErr(t, rt, s, "probe hog")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "KILL" {
		t.Fatalf("memory hog: %v (stderr %q), want killed by SIGKILL", err, stderr)
	}
	if got := execOut(t, rt, s, "echo alive; cat /proc/1/cmdline | tr '\\0' ' '"); !strings.HasPrefix(got, "alive\n/.devgpu/agent agent") {
		t.Fatalf("after the OOM kill the session answers %q", got)
	}
	oom := filepath.Join("/sys/fs/cgroup/memory", rt.cgroupPath(s.SessionID), "memory.oom_control")
	if b, err := os.ReadFile(oom); err != nil || !strings.Contains(string(b), "oom_kill 1") {
		t.Errorf("%s: %q (%v), want one OOM kill", oom, b, err)
	}
}

// Container root is not host root: each session maps its ids onto a range
// of unprivileged host ids of its own, so that root in a session can
// neither read host root's files nor reach host root's keyring. Files it
// writes in the workspace belong on the host to the workspace range's
// first uid, the same for every session, and look owned by root in each.
func TestUserNamespace(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	// Without seccomp, so that only the user namespace stands between the
	// session and host root's keyring.
	rt := newRuntimeWith(t, func(c *Config) { c.Seccomp = SeccompUnconfined })
	ws := t.TempDir()
	desc := fmt.Sprintf("devgpu-test-%d", time.Now().UnixNano())
	key, err := unix.AddKey("user", desc, []byte("host root's key"), unix.KEY_SPEC_USER_KEYRING)
	if err != nil {
		t.Fatalf("add a key to host root's keyring: %v", err)
	}
	t.Cleanup(func() { _, _ = unix.KeyctlInt(unix.KEYCTL_UNLINK, key, unix.KEY_SPEC_USER_KEYRING, 0, 0) })

	spec := func(prefix string) runtime.Spec {
		return runtimetest.StartSpec(t, rt, runtime.Spec{
			SessionID: fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9), AgentSecret: "s3cret",
			IdleExit: time.Minute, Workspace: ws,
		})
	}
	a, b := spec("usera"), spec("userb")

	maps := map[string]bool{}
	for _, s := range []runtime.Spec{a, b} {
		f := strings.Fields(execOut(t, rt, s, "cat /proc/1/uid_map; id -u"))
		if len(f) != 4 || f[0] != "0" || f[1] == "0" || f[2] != strconv.Itoa(IDRangeSize) || f[3] != "0" {
			t.Errorf("session %s: uid_map and id %v, want 0 mapped to an unprivileged range of %d and root inside", s.SessionID, f, IDRangeSize)
			continue
		}
		if host, _ := strconv.ParseUint(f[1], 10, 32); host < uint64(DefaultIDMap.Base) {
			t.Errorf("session %s's root is host uid %d, below the sessions' ranges", s.SessionID, host)
		}
		maps[f[1]] = true
	}
	if len(maps) != 2 {
		t.Errorf("two sessions share host ids %v", maps)
	}

	// Host root's 0600 file, put into the workspace while sessions use it,
	// is not the session root's.
	if err := os.WriteFile(filepath.Join(ws, "host-root-only"), []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, stderr, err := execErr(t, rt, a, "cat /workspace/host-root-only"); err == nil || strings.Contains(out, "host secret") {
		t.Errorf("session root read host root's 0600 file: %q %q %v", out, stderr, err)
	}
	if got := execOut(t, rt, a, "probe keysearch:"+desc); got != "keysearch ENOKEY\n" {
		t.Errorf("session root searching host root's keyring: %q, want ENOKEY", got)
	}

	// The workspace: written in one session as root, owned on the host by
	// the workspace uid, and root's in another.
	execOut(t, rt, a, "mkdir /workspace/d && echo a > /workspace/d/f")
	wsID := DefaultIDMap.workspaceID()
	for _, p := range []string{ws, filepath.Join(ws, "d"), filepath.Join(ws, "d", "f")} {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != wsID || st.Gid != wsID {
			t.Errorf("%s is owned by %d:%d on the host, want the workspace id %d", p, st.Uid, st.Gid, wsID)
		}
	}
	if got := execOut(t, rt, b, "stat -c %u:%g /workspace/d/f; echo b >> /workspace/d/f; cat /workspace/d/f"); got != "0:0\na\nb\n" {
		t.Errorf("the other session sees the workspace file as %q, want root's and writable", got)
	}
	// The image's files are root's inside too, and the writable layer works.
	if got := execOut(t, rt, a, "stat -c %u /bin/busybox /; touch /etc/new && stat -c %u /etc/new"); got != "0\n0\n0\n" {
		t.Errorf("image and layer ownership inside: %q", got)
	}
}

// The state directory may lie below directories that only root can pass,
// such as root's home: sessions' root filesystems are mounted elsewhere.
func TestStateDirBelowPrivateDir(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	private := testutil.ShortTempDir(t)
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, filepath.Join(private, "state"))
	s := start(t, rt, "private")
	if got := execOut(t, rt, s, "id -u"); got != "0\n" {
		t.Errorf("id -u in the session: %q", got)
	}
}

// A workspace written by sessions that ran as host root (before user
// namespaces) is given to the workspace uid on its first use, without
// following its links out of it, and stays the session root's to change.
func TestWorkspaceFromBeforeUserNamespaces(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	ws, outside := t.TempDir(), t.TempDir()
	hostFile := filepath.Join(outside, "host-file")
	for path, data := range map[string]string{filepath.Join(ws, "old"): "old\n", hostFile: "host\n", filepath.Join(ws, "other-user"): ""} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(ws, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hostFile, filepath.Join(ws, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(ws, "other-user"), 1234, 1234); err != nil {
		t.Fatal(err)
	}
	s := runtimetest.StartSpec(t, rt, runtime.Spec{
		SessionID: fmt.Sprintf("oldws-%d", time.Now().UnixNano()%1e9), AgentSecret: "s3cret", IdleExit: time.Minute, Workspace: ws,
	})
	if got := execOut(t, rt, s, "echo more >> /workspace/old && touch /workspace/d/new && stat -c %u /workspace/old /workspace/d/new"); got != "0\n0\n" {
		t.Errorf("the session's root and the old workspace: %q", got)
	}
	w := DefaultIDMap.workspaceID()
	for path, want := range map[string]uint32{
		ws: w, filepath.Join(ws, "old"): w, filepath.Join(ws, "d"): w, filepath.Join(ws, "link"): w,
		filepath.Join(ws, "other-user"): 1234, hostFile: 0,
	} {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != want || st.Gid != want {
			t.Errorf("%s is owned by %d:%d, want %d", path, st.Uid, st.Gid, want)
		}
	}
}
