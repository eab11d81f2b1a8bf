package agent

import (
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// reapInterval is the least time between two reaping passes: SIGCHLDs that
// arrive meanwhile make one more pass, so that a storm of exits costs at most
// one scan of /proc per interval.
const reapInterval = 10 * time.Millisecond

// orphans is the reaper of this process. It is one per process, not per
// Serve, because children are: a pass must know every child that any Serve
// started and will wait for.
var orphans = &reaper{isInit: func() bool { return os.Getpid() == 1 }, own: map[int]int{}}

// reaper collects orphans that the kernel reparents to this process. In a
// container (the oci runtime) the agent is PID 1, the init of the container's
// pid namespace, and inherits every process whose parent dies: a background
// job of a finished `sh -c 'cmd &'`, a daemon's intermediate fork. Without a
// wait they stay zombies for the container's lifetime, and count against its
// pids limit. Elsewhere (the local runtime) the host's init or a subreaper
// above the agent collects them, so the agent does not reap, and it does not
// make itself a subreaper (PR_SET_CHILD_SUBREAPER) either: outside a
// container, a session's daemons should go where a login's do.
//
// A plain wait4(-1) loop would also take the exit statuses of the agent's own
// children, which exec.Cmd.Wait waits for: Wait would fail with ECHILD, and
// the client would get 255 instead of the command's status. So a pass only
// waits, by pid, for zombie children that nobody else waits for:
//
//   - not a child that the agent started and has not waited for yet: start
//     and wait keep that set, and a child is in it before a pass can see it,
//     even one that exits at once (start holds startMu for reading across
//     cmd.Start, a pass holds it for writing while it waits);
//   - not in the agent's own session. The agent's children all lead sessions
//     of their own (setsid), so everything that descends from them is in
//     another one, while a child that other code of this process started
//     with os/exec (the inproc runtime runs Serve inside the server) stays in
//     the process's session, and keeps its exit status.
//
// Passes run on SIGCHLD, at most one per reapInterval, while a Serve holds
// the reaper.
type reaper struct {
	startMu sync.RWMutex // read: across a start and its track; write: a pass's waits

	mu  sync.Mutex
	own map[int]int // pids started and not yet waited for (a count: a pid may be reused before untrack)

	hmu     sync.Mutex
	isInit  func() bool // whether to reap: PID 1 (tests: a subreaper)
	holders int         // Serve calls running
	stop    chan struct{}
	done    chan struct{}
}

// start starts cmd and, when it started, tracks its pid until wait.
func (r *reaper) start(cmd *exec.Cmd) error {
	r.startMu.RLock()
	defer r.startMu.RUnlock()
	if err := startRaised(cmd.Start); err != nil {
		return err
	}
	r.mu.Lock()
	r.own[cmd.Process.Pid]++
	r.mu.Unlock()
	return nil
}

// wait waits for a command that start started, and stops tracking it.
func (r *reaper) wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	pid := cmd.Process.Pid
	r.mu.Lock()
	if r.own[pid]--; r.own[pid] <= 0 {
		delete(r.own, pid)
	}
	r.mu.Unlock()
	return err
}

func (r *reaper) tracked(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.own[pid] > 0
}

// hold runs the reaper, if this process is init, until every Serve that
// holds it has released it.
func (r *reaper) hold() (release func()) {
	r.hmu.Lock()
	defer r.hmu.Unlock()
	if !r.isInit() {
		return func() {}
	}
	if r.holders++; r.holders == 1 {
		r.stop, r.done = make(chan struct{}), make(chan struct{})
		go r.loop(r.stop, r.done)
	}
	return func() {
		r.hmu.Lock()
		r.holders--
		last := r.holders == 0
		stop, done := r.stop, r.done
		r.hmu.Unlock()
		if last {
			close(stop)
			<-done
		}
	}
}

func (r *reaper) loop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	sigs := make(chan os.Signal, 1) // SIGCHLDs coalesce: one pending is enough
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		r.reap() // the first pass collects what came before Notify
		t.Reset(reapInterval)
		select {
		case <-stop:
			return
		case <-t.C:
		}
		select {
		case <-stop:
			return
		case <-sigs:
		}
	}
}

// reap waits for the zombie children of this process that nobody else
// waits for, and returns how many it collected.
func (r *reaper) reap() int {
	// The scan needs no lock: a zombie that is an untracked child of ours
	// when the pass holds startMu is one that nobody waits for (a tracked one
	// that exited and was waited for meanwhile is gone, or its pid is
	// another process, which wait4 with WNOHANG leaves alone if alive).
	self, sid := os.Getpid(), 0
	if s, err := unix.Getsid(0); err == nil {
		sid = s
	}
	zombies := zombieChildren(self, sid)
	if len(zombies) == 0 {
		return 0
	}
	r.startMu.Lock()
	defer r.startMu.Unlock()
	n := 0
	for _, pid := range zombies {
		if r.tracked(pid) {
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
			n++
		}
	}
	return n
}

// zombieChildren lists, from /proc, the zombies whose parent is ppid and
// whose session is not sid.
func zombieChildren(ppid, sid int) []int {
	dir, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range dir {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := readStat(e.Name())
		if ok && st.state == 'Z' && st.ppid == ppid && st.sid != sid {
			pids = append(pids, pid)
		}
	}
	return pids
}
