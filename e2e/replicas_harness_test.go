package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/testutil"
)

// replicaSet is one devgpu installation served by several real `devgpu
// server` processes (replicas) on one private PostgreSQL, the way an
// operator runs it: a load balancer in front (lb, round robin over the
// replicas that accept), each replica reaching PostgreSQL through a proxy
// of its own (to cut one off), each advertising its own URL.
//
// The replicas run the local runtime on this one host. A local session is
// a directory (agent socket, pid file, placement) under DATA/sessions, so
// any replica can reach or stop any session only if they share that
// directory: each replica has its own data directory (pid file, logs),
// whose sessions and workspaces are links to one shared directory, and
// all hold the same agent key and installation id, copied from the first
// replica's before the others start (agents trust the key, sessions are
// marked with the installation).
type replicaSet struct {
	t        *testing.T
	bin      string
	root     string
	gpus     string
	pg       *testutil.PGServer
	lb       *testutil.Proxy
	admin    *env // the CLI as the organisation admin, through lb
	replicas []*replica
	st       store.Store // the test's own connection, for what only the store shows
}

// replica is one `devgpu server` process of a replicaSet, restartable.
type replica struct {
	set    *replicaSet
	idx    int
	dir    string // its data directory
	addr   string
	db     *testutil.Proxy // its way to PostgreSQL
	cmd    *exec.Cmd
	exited chan struct{}
	log    *logBuffer // every run's output, restarts included
}

// newReplicaSet starts n replicas lending the simulated inventory gpus.
func newReplicaSet(t *testing.T, n int, gpus string) *replicaSet {
	t.Helper()
	rs := &replicaSet{t: t, bin: testutil.Binary(t), root: testutil.ShortTempDir(t), gpus: gpus}
	rs.pg = testutil.StartPostgres(t)
	for _, d := range []string{"sessions", "workspaces"} {
		if err := os.MkdirAll(filepath.Join(rs.root, "shared", d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		r := &replica{set: rs, idx: i, dir: filepath.Join(rs.root, fmt.Sprintf("r%d", i)), addr: freeAddr(t), log: &logBuffer{}}
		r.db = testutil.NewProxy(t, rs.pg.Addr())
		if err := os.MkdirAll(r.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"sessions", "workspaces"} {
			if err := os.Symlink(filepath.Join(rs.root, "shared", d), filepath.Join(r.dir, d)); err != nil {
				t.Fatal(err)
			}
		}
		rs.replicas = append(rs.replicas, r)
	}
	rs.lb = testutil.NewProxy(t, rs.addrs()...)
	t.Cleanup(rs.cleanup)

	// The first replica migrates the store and makes the admin, the agent
	// key and the installation id; the others share them.
	first := rs.replicas[0]
	first.start()
	for _, r := range rs.replicas[1:] {
		for _, f := range []string{"agent.key", "installation"} {
			b, err := os.ReadFile(filepath.Join(first.dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(r.dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		r.start()
	}
	token, err := os.ReadFile(filepath.Join(first.dir, "admin.token"))
	if err != nil {
		t.Fatalf("the first replica wrote no admin token: %v", err)
	}
	rs.admin = rs.client(rs.lb.Addr, strings.TrimSpace(string(token)))

	ctx := testutil.Context(t, testutil.WaitMedium)
	if rs.st, err = postgres.Open(ctx, rs.pg.URL(rs.pg.Addr(), "postgres")); err != nil {
		t.Fatalf("open the replicas' store: %v", err)
	}
	return rs
}

func (rs *replicaSet) addrs() []string {
	var out []string
	for _, r := range rs.replicas {
		out = append(out, r.addr)
	}
	return out
}

// client is the CLI with its own config: token, through addr (the load
// balancer, or a proxy of the test's).
func (rs *replicaSet) client(addr, token string) *env {
	rs.t.Helper()
	e := &env{t: rs.t, bin: rs.bin, dir: testutil.ShortTempDir(rs.t)}
	b, err := json.Marshal(map[string]string{"url": "http://" + addr, "token": token})
	if err != nil {
		rs.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, "config.json"), b, 0o600); err != nil {
		rs.t.Fatal(err)
	}
	return e
}

// cleanup ends every session through a replica that still runs, stops
// the replicas, and kills any agent the shared session directory still
// names (sessions outlive their servers on purpose).
func (rs *replicaSet) cleanup() {
	if rs.admin != nil && rs.anyUp() {
		rs.admin.endSessions()
	}
	for _, r := range rs.replicas {
		r.stop(syscall.SIGTERM)
	}
	if rs.st != nil {
		rs.st.Close()
	}
	pids, _ := filepath.Glob(filepath.Join(rs.root, "shared", "sessions", "*", "agent.pid"))
	for _, p := range pids {
		b, _ := os.ReadFile(p)
		if f := strings.Fields(string(b)); len(f) > 0 {
			if pid, err := strconv.Atoi(f[0]); err == nil && pid > 1 && testutil.ProcessAlive(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if rs.t.Failed() {
		for _, r := range rs.replicas {
			rs.t.Logf("replica %d (%s) log:\n%s", r.idx, r.addr, r.log.String())
		}
	}
}

func (rs *replicaSet) anyUp() bool {
	for _, r := range rs.replicas {
		if r.up() {
			return true
		}
	}
	return false
}

// up reports whether the replica's process runs.
func (r *replica) up() bool {
	if r.cmd == nil {
		return false
	}
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

func (r *replica) url() string { return "http://" + r.addr }

// start runs the replica's server and waits until it is ready: /readyz
// answers 200 (the store answers and it has registered).
func (r *replica) start() {
	t := r.set.t
	t.Helper()
	args := []string{"server", "--runtime", "local", "--insecure-local-runtime",
		"--data", r.dir, "--listen", r.addr, "--advertise-url", r.url(),
		"--store", r.set.pg.URL(r.db.Addr, "postgres"), "--gpus", r.set.gpus,
		"--liveness-interval", "200ms", "--ping-interval", "1s", "--log-level", "debug"}
	fmt.Fprintf(r.log, "=== replica %d starts: devgpu %s\n", r.idx, strings.Join(args, " "))
	cmd := exec.Command(r.set.bin, args...)
	// Its own CLI config path, so that nothing writes the tester's.
	cmd.Env = append(os.Environ(), "DEVGPU_CONFIG="+filepath.Join(r.dir, "cli.json"), "DEVGPU_URL=", "DEVGPU_TOKEN=", "DEVGPU_STORE_URL=")
	cmd.Stdout, cmd.Stderr = r.log, r.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.cmd, r.exited = cmd, make(chan struct{})
	exited := r.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("replica %d to answer /readyz with 200", r.idx), func() bool {
		if !r.up() {
			t.Fatalf("replica %d exited while starting:\n%s", r.idx, r.log.String())
		}
		code, _ := r.get("/readyz")
		return code == http.StatusOK
	})
}

// stop ends the replica's process with sig and waits for it to exit.
func (r *replica) stop(sig syscall.Signal) {
	if !r.up() {
		return
	}
	_ = r.cmd.Process.Signal(sig)
	select {
	case <-r.exited:
	case <-time.After(testutil.WaitMedium):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	fmt.Fprintf(r.log, "=== replica %d stopped by %v\n", r.idx, sig)
}

// get fetches path from this replica directly, bypassing the balancer;
// code 0 when it does not answer.
func (r *replica) get(path string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitShort)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url()+path, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// id is the replica id its running process registered under: the newest
// registration in the store with its advertised URL; "" when none is
// there (not yet registered, or declared dead).
func (r *replica) id() string {
	t := r.set.t
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitShort)
	all, err := r.set.st.ListReplicas(ctx)
	if err != nil {
		t.Fatalf("list replicas: %v", err)
	}
	var newest store.Replica
	for _, x := range all {
		if x.URL == r.url() && x.StartedAt.After(newest.StartedAt) {
			newest = x
		}
	}
	return newest.ID
}

// leads reports what the replica itself says about leading: /metrics'
// devgpu_leader gauge. ok is false when it does not say (not answering).
func (r *replica) leads() (leading, ok bool) {
	code, body := r.get("/metrics")
	if code != http.StatusOK {
		return false, false
	}
	for _, line := range strings.Split(body, "\n") {
		if v, found := strings.CutPrefix(line, "devgpu_leader "); found {
			return strings.TrimSpace(v) == "1", true
		}
	}
	return false, false
}

// leaderLease reads the leader lease from the store; ok is false while
// nobody ever held it.
func (rs *replicaSet) leaderLease() (store.Lease, bool) {
	rs.t.Helper()
	ctx := testutil.Context(rs.t, testutil.WaitShort)
	l, err := rs.st.Lease(ctx, "leader")
	if errors.Is(err, store.ErrNotFound) {
		return l, false
	}
	if err != nil {
		rs.t.Fatalf("read the leader lease: %v", err)
	}
	return l, true
}

// leader waits until a running replica holds an unexpired leader lease
// with an epoch above minEpoch, and returns it with the lease.
func (rs *replicaSet) leader(minEpoch int64) (*replica, store.Lease) {
	rs.t.Helper()
	var lead *replica
	var lease store.Lease
	testutil.Eventually(rs.t, testutil.WaitLong, fmt.Sprintf("a replica to lead with an epoch above %d", minEpoch), func() bool {
		l, ok := rs.leaderLease()
		if !ok || l.Epoch <= minEpoch {
			return false
		}
		for _, r := range rs.replicas {
			if r.up() && l.Holder != "" && r.id() == l.Holder {
				lead, lease = r, l
				return true
			}
		}
		return false
	})
	return lead, lease
}
