package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// The fault tests of issue 12: three real `devgpu server` replicas on one
// real PostgreSQL (replicas_harness_test.go), under a load of interactive
// shells on real PTYs and `devgpu run` loops.

// Tight caps, so that a violation would show in the audit replay: shells
// fill project alpha, runs compete for project beta, and one user runs
// more loops than its per-user cap allows.
const (
	faultGPUs        = "t4:6"
	faultProjectCap  = 3
	faultPerUserCap  = 2
	faultShellGrace  = "2m" // alpha: shells must come back well within it
	faultRunGrace    = "3s" // beta: a run cut off with its replica ends soon
	faultRunsPerUser = "u0:3,u1:2,u2:1"
)

// tenants are the users of a fault test, each with a CLI through the load
// balancer.
type tenants struct {
	rs     *replicaSet
	tokens map[string]string
	users  []string
}

func setupTenants(rs *replicaSet) *tenants {
	rs.t.Helper()
	for _, p := range []struct{ name, grace string }{{"alpha", faultShellGrace}, {"beta", faultRunGrace}} {
		rs.admin.admin("project", "create", p.name, "--gpu-enabled=true", "--max-gpus", fmt.Sprint(faultProjectCap),
			"--max-gpus-per-user", fmt.Sprint(faultPerUserCap), "--detach-grace", p.grace)
	}
	ts := &tenants{rs: rs, tokens: map[string]string{}}
	for i := range 3 {
		name := fmt.Sprintf("u%d", i)
		r := rs.admin.cli("admin", "user", "create", name, "--json")
		var u sdk.UserCreated
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &u) != nil || u.Token == "" {
			rs.t.Fatalf("admin user create %s: %+v", name, r)
		}
		rs.admin.admin("member", "add", "alpha", name)
		rs.admin.admin("member", "add", "beta", name)
		ts.tokens[name] = u.Token
		ts.users = append(ts.users, name)
	}
	return ts
}

// shell is an interactive `devgpu shell` on a real PTY whose connections
// go through a proxy of its own: pinned to one replica while it opens, so
// that the test knows which replica it is attached through, then, like a
// load balancer, to every replica.
type shell struct {
	tm      *term
	id      string
	pid     string // the shell's $$
	via     *replica
	viaID   string
	balance *testutil.Proxy
}

var shellPID = regexp.MustCompile(`PID=([0-9]+)\.`)

func (ts *tenants) openShell(user string, via *replica) *shell {
	rs := ts.rs
	rs.t.Helper()
	sh := &shell{via: via, viaID: via.id(), balance: testutil.NewProxy(rs.t, via.addr)}
	e := rs.client(sh.balance.Addr, ts.tokens[user])
	sh.tm = e.terminal("shell", "--project", "alpha")
	sh.id = sh.tm.sessionID()
	sh.tm.ready()
	sh.tm.send("echo P''ID=$$.\r")
	m := shellPID.FindStringSubmatch(sh.tm.expect("."))
	for m == nil {
		m = shellPID.FindStringSubmatch(sh.tm.expect("."))
	}
	sh.pid = m[1]
	if held := ts.attachedVia(sh.id); !slices.Equal(held, []string{sh.viaID}) {
		rs.t.Fatalf("shell %s is attached through replicas %v, want only %s (replica %d)", sh.id, held, sh.viaID, via.idx)
	}
	// From now on its connections go to whichever replica accepts.
	var others []string
	for _, r := range rs.replicas {
		if r != via {
			others = append(others, r.addr)
		}
	}
	sh.balance.SetTargets(append(others, via.addr)...)
	return sh
}

// attachedVia lists the replicas holding the session's attachments.
func (ts *tenants) attachedVia(session string) []string {
	ts.rs.t.Helper()
	ctx := testutil.Context(ts.rs.t, testutil.WaitShort)
	as, err := ts.rs.st.ListAttachments(ctx, session)
	if err != nil {
		ts.rs.t.Fatalf("list attachments of %s: %v", session, err)
	}
	var out []string
	for _, a := range as {
		out = append(out, a.Replica)
	}
	return out
}

// survivesKill types a command whose output comes only after kill() has
// run, kills, and checks that the shell comes back by itself through
// another replica: that output arrives, a command typed afterwards runs
// in the same shell (same $$), and the session is attached through a live
// replica only.
func (ts *tenants) survivesKill(sh *shell, kill func()) {
	t := ts.rs.t
	t.Helper()
	sh.tm.send("sleep 1; echo BEF''ORE-$((6*7))\r")
	kill()
	sh.tm.expect("BEFORE-42")
	sh.tm.send("echo AF''TER=$$.\r")
	sh.tm.expect("AFTER=" + sh.pid + ".")
	// That it went through another replica shows below. (Its status line
	// says "reconnecting" only when that takes over 100 ms, which a quick
	// redial beats.)
	testutil.Eventually(t, testutil.WaitMedium, "shell "+sh.id+" to be attached through one live replica only", func() bool {
		held := ts.attachedVia(sh.id)
		return len(held) == 1 && held[0] != sh.viaID
	})
	if s := ts.rs.admin.sessionAny(sh.id); s.State != sdk.StateRunning {
		t.Fatalf("shell session %s is %s (%s) after the kill, want running", sh.id, s.State, s.EndReason)
	}
}

// exit ends the shell the way a user does; the session ends "closed".
func (sh *shell) exit(t *testing.T) {
	t.Helper()
	sh.tm.send("exit\r")
	if code := sh.tm.wait(); code != 0 {
		t.Errorf("shell %s exited %d:\n%s", sh.id, code, sh.tm.output())
	}
}

// sessionAny finds a session of anyone's (the admin's view).
func (e *env) sessionAny(id string) sdk.Session {
	e.t.Helper()
	for _, s := range e.allSessions() {
		if s.ID == id {
			return s
		}
	}
	e.t.Fatalf("session %s not listed", id)
	return sdk.Session{}
}

func (e *env) allSessions() []sdk.Session {
	e.t.Helper()
	r := e.cli("sessions", "list", "--all", "--all-users", "--json")
	var out []sdk.Session
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		e.t.Fatalf("sessions list --all --all-users: %+v", r)
	}
	return out
}

// runLoops keep `devgpu run --wait` commands going in project beta, each
// loop starting its next run when the last ends, until stopped.
type runLoops struct {
	mu      sync.Mutex
	results []runResult
	stop    chan struct{}
	wg      sync.WaitGroup
}

type runResult struct {
	user, session string
	code          int
	stderr        string
}

// startRuns starts loops per spec ("u0:3,u1:2": three loops as u0, two
// as u1) through the load balancer.
func (ts *tenants) startRuns(spec string) *runLoops {
	rs := ts.rs
	l := &runLoops{stop: make(chan struct{})}
	for _, part := range strings.Split(spec, ",") {
		user, n, _ := strings.Cut(part, ":")
		var count int
		fmt.Sscan(n, &count)
		e := rs.client(rs.lb.Addr, ts.tokens[user])
		for range count {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for {
					select {
					case <-l.stop:
						return
					default:
					}
					l.add(runOnce(e, user))
				}
			}()
		}
	}
	rs.t.Cleanup(func() {
		l.halt()
		if !rs.t.Failed() {
			return
		}
		// Why runs stopped completing, if they did: the last failures.
		all := l.all()
		shown := 0
		for i := len(all) - 1; i >= 0 && shown < 5; i-- {
			if all[i].code != 0 {
				rs.t.Logf("run as %s exited %d: %s", all[i].user, all[i].code, strings.TrimSpace(all[i].stderr))
				shown++
			}
		}
	})
	return l
}

// runOnce runs one command; the session id is the first line it prints.
func runOnce(e *env, user string) runResult {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitLong)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, "run", "--project", "beta", "--wait=2m", "--",
		"sh", "-c", `echo "$DEVGPU_SESSION_ID"; sleep 0.3; echo ran`)
	cmd.Env = e.environ()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	_ = cmd.Run()
	res := runResult{user: user, code: cmd.ProcessState.ExitCode(), stderr: stderr.String()}
	res.session, _, _ = strings.Cut(stdout.String(), "\n")
	if res.code == 0 && !strings.HasSuffix(stdout.String(), "ran\n") {
		res.code = -2 // exit 0 without the command's whole output: a lie
	}
	return res
}

func (l *runLoops) add(r runResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.results = append(l.results, r)
}

// completed counts the runs that ran to the end.
func (l *runLoops) completed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.results {
		if r.code == 0 {
			n++
		}
	}
	return n
}

// waitMore waits until n more runs than now have completed.
func (l *runLoops) waitMore(t *testing.T, n int, why string) {
	t.Helper()
	want := l.completed() + n
	testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("%d more runs to complete %s", n, why), func() bool { return l.completed() >= want })
}

// halt stops the loops after their current runs and waits for them.
func (l *runLoops) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *runLoops) all() []runResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.results)
}

// SIGKILL of a replica, then of the leader, under a load of shells and
// runs: every shell attached through a killed replica comes back through
// another one and continues in the same PTY; the cluster keeps admitting
// and ending runs; and once everything has ended nothing was lost, no GPU
// leaked, no cap was exceeded at any moment and every second was metered
// exactly once.
func TestReplicaKilledUnderLoad(t *testing.T) {
	t.Parallel()
	rs := newReplicaSet(t, 3, faultGPUs)
	ts := setupTenants(rs)
	var shells []*shell
	for i, r := range rs.replicas {
		shells = append(shells, ts.openShell(ts.users[i], r))
	}
	runs := ts.startRuns(faultRunsPerUser)
	runs.waitMore(t, 6, "before any kill")

	lead, lease := rs.leader(0)
	var victim *replica
	for _, r := range rs.replicas {
		if r != lead {
			victim = r
			break
		}
	}
	t.Logf("killing replica %d (not the leader; replica %d leads at epoch %d)", victim.idx, lead.idx, lease.Epoch)
	ts.survivesKill(shells[victim.idx], func() { victim.stop(syscall.SIGKILL) })
	runs.waitMore(t, 6, "after a replica was killed")
	for _, sh := range shells {
		sh.tm.send("echo ST''ILL=$$.\r")
		sh.tm.expect("STILL=" + sh.pid + ".")
	}
	victim.start()

	t.Logf("killing the leader, replica %d", lead.idx)
	ts.survivesKill(shells[lead.idx], func() { lead.stop(syscall.SIGKILL) })
	next, nextLease := rs.leader(lease.Epoch)
	if next == lead {
		t.Fatalf("the killed replica %d leads again", lead.idx)
	}
	t.Logf("replica %d leads at epoch %d", next.idx, nextLease.Epoch)
	runs.waitMore(t, 6, "after the leader was killed")
	lead.start()
	runs.waitMore(t, 3, "with all three replicas back")

	runs.halt()
	for _, sh := range shells {
		sh.exit(t)
	}
	checkAfterFaults(rs, runs.all(), shells)
}

// A PostgreSQL restart in the middle of the load recovers by itself: a
// fast restart under load, then a stop long enough to see requests
// answered 503 with a clear message, then a start; shells keep their
// PTY, runs keep being admitted, nothing is lost.
func TestReplicasSurvivePostgresRestart(t *testing.T) {
	t.Parallel()
	rs := newReplicaSet(t, 3, faultGPUs)
	ts := setupTenants(rs)
	sh := ts.openShell("u0", rs.replicas[0])
	runs := ts.startRuns(faultRunsPerUser)
	runs.waitMore(t, 3, "before the restart")

	rs.pg.Restart(t)
	runs.waitMore(t, 3, "after PostgreSQL restarted")
	sh.tm.send("echo RE''START=$$.\r")
	sh.tm.expect("RESTART=" + sh.pid + ".")

	rs.pg.Stop(t)
	token := rs.admin.token()
	for _, r := range rs.replicas {
		var body string
		last := -1
		testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("replica %d to answer 503 while PostgreSQL is down", r.idx), func() bool {
			var code int
			code, body = r.getAuth("/api/v1/sessions", token)
			if code != last {
				t.Logf("replica %d answers %d with PostgreSQL down: %s", r.idx, code, strings.TrimSpace(body))
				last = code
			}
			return code == http.StatusServiceUnavailable
		})
		if !strings.Contains(body, "database") {
			t.Errorf("replica %d answers 503 without saying the database is unreachable: %s", r.idx, body)
		}
		// /readyz answers from the heartbeat: not ready once two beats
		// have failed.
		testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("replica %d's /readyz to answer 503 while PostgreSQL is down", r.idx), func() bool {
			code, _ := r.get("/readyz")
			return code == http.StatusServiceUnavailable
		})
	}
	// The shell's bytes never touch the store: it works on.
	sh.tm.send("echo DO''WN=$$.\r")
	sh.tm.expect("DOWN=" + sh.pid + ".")
	rs.pg.Start(t)
	for _, r := range rs.replicas {
		testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("replica %d to be ready again", r.idx), func() bool {
			code, _ := r.get("/readyz")
			return code == http.StatusOK
		})
		if code, body := r.getAuth("/api/v1/sessions", token); code != http.StatusOK {
			t.Errorf("replica %d after PostgreSQL came back: %d %s", r.idx, code, body)
		}
	}
	runs.waitMore(t, 6, "after PostgreSQL came back")
	runs.halt()
	sh.tm.send("echo BA''CK=$$.\r")
	sh.tm.expect("BACK=" + sh.pid + ".")
	sh.exit(t)
	checkAfterFaults(rs, runs.all(), []*shell{sh})
}

// Fencing: the leader cut off from PostgreSQL (its proxy cut) says it no
// longer leads before the store shows any other replica holding the
// lease. Each poll asks the old leader first, then the store, so "seen
// not leading at poll i, new holder first seen at poll j > i" orders the
// two events without any clock.
func TestLeaderCutOffStopsBeforeAnotherLeads(t *testing.T) {
	t.Parallel()
	rs := newReplicaSet(t, 3, faultGPUs)
	lead, lease := rs.leader(0)
	if leading, ok := lead.leads(); !ok || !leading {
		t.Fatalf("replica %d holds the lease but does not say it leads (ok=%v leading=%v)", lead.idx, ok, leading)
	}
	for _, r := range rs.replicas {
		if leading, ok := r.leads(); r != lead && (!ok || leading) {
			t.Fatalf("replica %d, not holding the lease, says leading=%v (ok=%v)", r.idx, leading, ok)
		}
	}

	lead.db.Cut()
	polls, stoppedAt, takenAt := 0, -1, -1
	var newLease store.Lease
	testutil.Eventually(t, testutil.WaitLong, "another replica to take the lease", func() bool {
		polls++
		if leading, ok := lead.leads(); ok && !leading && stoppedAt < 0 {
			stoppedAt = polls
		} else if leading && stoppedAt >= 0 {
			t.Fatalf("replica %d said it leads again at poll %d after it had stopped at poll %d", lead.idx, polls, stoppedAt)
		}
		if l, ok := rs.leaderLease(); ok && l.Epoch > lease.Epoch {
			takenAt, newLease = polls, l
			return true
		}
		return false
	})
	if stoppedAt < 0 || stoppedAt >= takenAt {
		t.Fatalf("the cut-off leader (replica %d) was first seen not leading at poll %d, but the store showed %s leading at epoch %d by poll %d: it did not stop acting first",
			lead.idx, stoppedAt, newLease.Holder, newLease.Epoch, takenAt)
	}
	t.Logf("old leader seen stopped at poll %d, new lease (epoch %d) seen at poll %d", stoppedAt, newLease.Epoch, takenAt)
	next, _ := rs.leader(lease.Epoch)
	if next == lead {
		t.Fatalf("the lease went back to the cut-off replica %d", lead.idx)
	}
	if leading, ok := lead.leads(); ok && leading {
		t.Fatalf("the cut-off replica %d says it leads while replica %d holds the lease", lead.idx, next.idx)
	}

	// Reconnected, it serves again as a follower.
	lead.db.Restore()
	testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("replica %d to be ready again after its database came back", lead.idx), func() bool {
		code, _ := lead.get("/readyz")
		return code == http.StatusOK
	})
	if leading, ok := lead.leads(); !ok || leading {
		t.Fatalf("the reconnected replica %d says leading=%v (ok=%v) while replica %d holds the lease", lead.idx, leading, ok, next.idx)
	}
}

// token is the CLI config's token.
func (e *env) token() string {
	e.t.Helper()
	var cfg struct {
		Token string `json:"token"`
	}
	b, err := os.ReadFile(filepath.Join(e.dir, "config.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil || cfg.Token == "" {
		e.t.Fatalf("config.json has no token: %v", err)
	}
	return cfg.Token
}

// getAuth is get with a bearer token.
func (r *replica) getAuth(path, token string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitShort)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url()+path, nil)
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// checkAfterFaults waits until every session has ended and checks what
// the faults must not have broken.
func checkAfterFaults(rs *replicaSet, runs []runResult, shells []*shell) {
	t := rs.t
	t.Helper()
	var all []sdk.Session
	testutil.Eventually(t, testutil.WaitLong, "every session to end", func() bool {
		all = rs.admin.allSessions()
		for _, s := range all {
			if s.Active() {
				return false
			}
		}
		return true
	})
	byID := map[string]sdk.Session{}
	for _, s := range all {
		byID[s.ID] = s
	}

	// No session lost: each ended for a reason its client explains.
	failed := 0
	for _, r := range runs {
		if r.code != 0 {
			failed++
			continue
		}
		s, ok := byID[r.session]
		if !ok {
			t.Errorf("run as %s completed in session %q, which is not listed", r.user, r.session)
		} else if s.State != sdk.StateEnded || s.EndReason != sdk.ReasonClosed {
			t.Errorf("run as %s completed, but its session %s is %s (%s)", r.user, s.ID, s.State, s.EndReason)
		}
	}
	for _, sh := range shells {
		if s := byID[sh.id]; s.EndReason != sdk.ReasonClosed {
			t.Errorf("shell session %s ended %s (%s), want closed by its exit", sh.id, s.State, s.EndReason)
		}
	}
	reasons := map[string]int{}
	for _, s := range all {
		reasons[s.State+"/"+s.EndReason]++
		switch {
		case s.EndReason == sdk.ReasonClosed, s.EndReason == sdk.ReasonDetached, s.EndReason == sdk.ReasonGaveUp:
		case s.State == sdk.StateFailed && s.EndReason == sdk.ReasonError && strings.Contains(s.Error, "restarted before the session finished starting"):
			// Its start was in flight on a killed replica: never ran, its
			// client was cut off with an error, its GPU given back.
		default:
			t.Errorf("session %s of %s ended %s (%s): %s", s.ID, s.User, s.State, s.EndReason, s.Error)
		}
	}
	t.Logf("%d runs (%d cut off or failed), %d sessions: %v", len(runs), failed, len(all), reasons)
	// Nothing done twice: each `devgpu run` made at most one session, so
	// the sessions no completed run claims are at most the failed runs.
	claimed := map[string]bool{}
	for _, r := range runs {
		if r.code == 0 {
			claimed[r.session] = true
		}
	}
	var unclaimed []string
	for _, s := range all {
		if s.Project == "beta" && !claimed[s.ID] {
			unclaimed = append(unclaimed, fmt.Sprintf("%s(%s/%s, started %v)", s.ID, s.State, s.EndReason, s.StartedAt != nil))
		}
	}
	if len(unclaimed) > failed {
		t.Errorf("%d runs failed, but %d sessions of project beta belong to no completed run: some run made more than one session: %v", failed, len(unclaimed), unclaimed)
	}
	for _, r := range runs {
		if r.code != 0 && r.code != 255 {
			t.Errorf("a run as %s exited %d (want 0, or 255 when cut off): %s", r.user, r.code, r.stderr)
		}
	}

	// No GPU leaked.
	r := rs.admin.cli("gpus", "--json")
	var pools []sdk.GPUPool
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &pools) != nil || len(pools) == 0 {
		t.Fatalf("gpus --json: %+v", r)
	}
	for _, p := range pools {
		if p.Free != p.Total {
			t.Errorf("%s in %s: %d of %d GPUs free after every session ended", p.Type, p.Region, p.Free, p.Total)
		}
	}

	checkCapsReplay(t, rs.admin)
	checkDevicesExclusive(t, all)
	checkLedger(t, rs, all)
}

// checkCapsReplay replays the audit log's starts and ends: at no point did
// a project or a user in a project hold more GPUs than its cap.
func checkCapsReplay(t *testing.T, admin *env) {
	t.Helper()
	events := append(admin.auditEvents("session.start"), admin.auditEvents("session.end")...)
	sort.Slice(events, func(i, j int) bool { return events[i].ID < events[j].ID })
	type owner struct{ project, user string }
	type held struct {
		owner
		gpus int
	}
	open := map[string]held{}
	perProject, perUser := map[string]int{}, map[owner]int{}
	starts, peak := 0, 0
	for _, e := range events {
		switch e.Action {
		case "session.start":
			gpus := 1
			if after, ok := e.After.(map[string]any); ok {
				if n, ok := after["gpu_count"].(float64); ok {
					gpus = int(n)
				}
			}
			if _, dup := open[e.Target]; dup {
				t.Errorf("audit event %d starts session %s, which was already open", e.ID, e.Target)
				continue
			}
			h := held{owner{e.Project, e.Actor}, gpus}
			open[e.Target] = h
			perProject[h.project] += gpus
			perUser[h.owner] += gpus
			starts++
			peak = max(peak, perProject[h.project])
			if perProject[h.project] > faultProjectCap || perUser[h.owner] > faultPerUserCap {
				t.Errorf("cap exceeded at audit event %d (%s): project %s holds %d of %d GPUs, user %s %d of %d",
					e.ID, e.Target, h.project, perProject[h.project], faultProjectCap, h.user, perUser[h.owner], faultPerUserCap)
			}
		case "session.end":
			h, ok := open[e.Target]
			if !ok {
				continue // a session that never started (gave up in the queue) ends too
			}
			delete(open, e.Target)
			perProject[h.project] -= h.gpus
			perUser[h.owner] -= h.gpus
		}
	}
	if len(open) != 0 {
		t.Errorf("the audit log shows %d sessions started and never ended: %v", len(open), open)
	}
	if peak < faultProjectCap {
		t.Errorf("no project ever reached its cap of %d (peak %d): the caps did not bind, so the replay proves nothing", faultProjectCap, peak)
	}
	t.Logf("audit replay: %d starts, peak %d GPUs in a project (cap %d)", starts, peak, faultProjectCap)
}

// checkDevicesExclusive: no GPU device was ever given to two sessions at
// once (the replicas' runtimes share one host's devices).
func checkDevicesExclusive(t *testing.T, all []sdk.Session) {
	t.Helper()
	type span struct {
		id         string
		start, end time.Time
	}
	byDevice := map[string][]span{}
	for _, s := range all {
		if s.StartedAt == nil || s.EndedAt == nil {
			continue
		}
		for _, g := range s.GPUs {
			byDevice[g] = append(byDevice[g], span{s.ID, *s.StartedAt, *s.EndedAt})
		}
	}
	for dev, spans := range byDevice {
		sort.Slice(spans, func(i, j int) bool { return spans[i].start.Before(spans[j].start) })
		for i := 1; i < len(spans); i++ {
			if spans[i].start.Before(spans[i-1].end) {
				t.Errorf("GPU %s was given to session %s from %s while session %s held it until %s",
					dev, spans[i].id, spans[i].start.Format(time.RFC3339Nano), spans[i-1].id, spans[i-1].end.Format(time.RFC3339Nano))
			}
		}
	}
}

// checkLedger: each session that ran is metered, per GPU, over exactly
// [started_at, ended_at): contiguous entries, no gap, no overlap, no
// duplicate; a session that never ran has no entry.
func checkLedger(t *testing.T, rs *replicaSet, all []sdk.Session) {
	t.Helper()
	ctx := testutil.Context(t, testutil.WaitMedium)
	entries, err := rs.st.ListUsage(ctx, store.UsageFilter{})
	if err != nil {
		t.Fatalf("read the usage ledger: %v", err)
	}
	type key struct{ session, gpu string }
	bySpan := map[key][]store.UsageEntry{}
	for _, e := range entries {
		bySpan[key{e.SessionID, e.GPUID}] = append(bySpan[key{e.SessionID, e.GPUID}], e)
	}
	sessions := map[string]sdk.Session{}
	metered := 0
	for _, s := range all {
		sessions[s.ID] = s
		if s.StartedAt == nil {
			continue
		}
		for _, g := range s.GPUs {
			es := bySpan[key{s.ID, g}]
			delete(bySpan, key{s.ID, g})
			if len(es) == 0 {
				t.Errorf("session %s ran on %s from %s to %s but was never metered", s.ID, g, s.StartedAt, s.EndedAt)
				continue
			}
			metered++
			sort.Slice(es, func(i, j int) bool { return es[i].Start.Before(es[j].Start) })
			at := s.StartedAt.Truncate(time.Microsecond)
			for _, e := range es {
				if !e.Start.Equal(at) {
					t.Errorf("session %s on %s: ledger entry %d starts %s, want %s (a gap or an overlap)", s.ID, g, e.ID, e.Start.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano))
				}
				at = e.End
			}
			if end := s.EndedAt.Truncate(time.Microsecond); !at.Equal(end) {
				t.Errorf("session %s on %s: metered until %s, ended at %s", s.ID, g, at.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano))
			}
		}
	}
	for k, es := range bySpan {
		t.Errorf("%d ledger entries for session %s on GPU %s, which it never held (session %+v)", len(es), k.session, k.gpu, sessions[k.session])
	}
	t.Logf("ledger: %d entries, %d session-GPU spans checked", len(entries), metered)
}

// The replicas' local runtimes lend one host's GPUs: a device held by a
// session one replica started is never handed out by another, and a
// device freed by whichever replica ended a session can be handed out by
// any replica again.
func TestReplicasShareHostDevices(t *testing.T) {
	t.Parallel()
	rs := newReplicaSet(t, 2, "t4:2")
	ts := setupTenants(rs)
	r0, r1 := rs.replicas[0], rs.replicas[1]
	hold := func(user string, via *replica) (*bg, sdk.Session) {
		t.Helper()
		e := rs.client(via.addr, ts.tokens[user])
		b := e.background("run", "--project", "beta", "--", "sh", "-c", `echo "$DEVGPU_SESSION_ID"; exec sleep 600`)
		var id string
		testutil.Eventually(t, testutil.WaitLong, fmt.Sprintf("a session of %s through replica %d to run", user, via.idx), func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.done() {
				t.Fatalf("run through replica %d exited %d: %s", via.idx, b.code, b.stderr.String())
			}
			line, _, ok := strings.Cut(b.stdout.String(), "\n")
			id = line
			return ok
		})
		return b, rs.admin.sessionAny(id)
	}
	a, sa := hold("u0", r0)
	b, sb := hold("u1", r1)
	if len(sa.GPUs) != 1 || len(sb.GPUs) != 1 || sa.GPUs[0] == sb.GPUs[0] {
		t.Fatalf("session %s (started through replica 0) holds %v and session %s (through replica 1) holds %v at the same time", sa.ID, sa.GPUs, sb.ID, sb.GPUs)
	}
	// Each ended through the other replica.
	for _, x := range []struct {
		run  *bg
		s    sdk.Session
		via  *replica
		user string
	}{{a, sa, r1, "u0"}, {b, sb, r0, "u1"}} {
		if r := rs.client(x.via.addr, ts.tokens[x.user]).cli("sessions", "stop", x.s.ID); r.code != 0 {
			t.Fatalf("stop %s through replica %d: %+v", x.s.ID, x.via.idx, r)
		}
		x.run.wait(t)
	}
	// Both devices are free again, for either replica to hand out.
	c, sc := hold("u0", r0)
	d, sd := hold("u1", r0)
	if sc.GPUs[0] == sd.GPUs[0] {
		t.Fatalf("sessions %s and %s both hold %v", sc.ID, sd.ID, sc.GPUs)
	}
	for _, s := range []sdk.Session{sc, sd} {
		if r := rs.admin.cli("sessions", "stop", s.ID); r.code != 0 {
			t.Fatalf("stop %s: %+v", s.ID, r)
		}
	}
	c.wait(t)
	d.wait(t)
}
