package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// asInit makes the test process what the agent is in a container, as far as
// orphans go: a child subreaper, to which the kernel reparents the orphans
// of the agent's sessions as it does to a pid namespace's init. init says
// whether the reaper should take itself for init. Tests that use it must
// not be parallel: the subreaper setting is the whole process's.
func asInit(t *testing.T, init bool) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	setInit(init)
	t.Cleanup(func() {
		setInit(false)
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		// Whatever was reparented to us stays our child: collect it, so
		// that no later test sees our zombies.
		for _, pid := range sessionChildren() {
			_ = unix.Kill(pid, unix.SIGKILL)
			_, _ = unix.Wait4(pid, nil, 0, nil)
		}
	})
}

func setInit(init bool) {
	orphans.hmu.Lock()
	defer orphans.hmu.Unlock()
	if init {
		orphans.isInit = func() bool { return true }
	} else {
		orphans.isInit = func() bool { return os.Getpid() == 1 }
	}
}

// sessionChildren lists the children of the test process that are not in
// its session: the agent's sessions' processes and their reparented
// orphans, alive or zombies.
func sessionChildren() []int {
	self := os.Getpid()
	sid, _ := unix.Getsid(0)
	dir, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range dir {
		st, ok := readStat(e.Name())
		if ok && st.ppid == self && st.sid != sid {
			pid, _ := strconv.Atoi(e.Name())
			pids = append(pids, pid)
		}
	}
	return pids
}

// zombieChild reports whether pid is a zombie child of the test process.
func zombieChild(pid int) bool {
	st, ok := readStat(strconv.Itoa(pid))
	return ok && st.state == 'Z' && st.ppid == os.Getpid()
}

func TestReaperCollectsOrphans(t *testing.T) {
	// Control: without the reaper, an orphan becomes our zombie, as it
	// does the container's init's.
	asInit(t, false)
	a := startAgent(t, nil)
	out, err := newSession(t, a.dial(t)).Output("sleep 0.1 & echo $!; exit 0")
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := strconv.Atoi(string(out[:len(out)-1]))
	if err != nil {
		t.Fatalf("orphan pid: %q", out)
	}
	eventually(t, fmt.Sprintf("orphan %d to be our zombie", orphan), func() bool { return zombieChild(orphan) })
	time.Sleep(50 * time.Millisecond)
	if !zombieChild(orphan) {
		t.Fatalf("orphan %d was reaped without a reaper", orphan)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}

	// The reaper's first pass collects the zombie that came before it.
	setInit(true)
	a = startAgent(t, nil)
	cl := a.dial(t)
	eventually(t, fmt.Sprintf("zombie %d to be reaped", orphan), func() bool { return !zombieChild(orphan) })

	// Orphans of an exec, while the agent's own children, which exit at
	// once and in numbers, keep their exit statuses. Passes run all along,
	// on SIGCHLD and in a loop of their own, to give the races a chance.
	stop := make(chan struct{})
	var passes sync.WaitGroup
	passes.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				orphans.reap()
			}
		}
	})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			s, err := cl.NewSession()
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			want := i + 1
			cmd := "exit " + strconv.Itoa(want)
			if i%2 == 0 {
				cmd = "sleep 0.2 & " + cmd
			}
			if err := s.Run(cmd); err == nil {
				t.Errorf("%q: exit status 0, want %d", cmd, want)
			} else if ee := (*ssh.ExitError)(nil); !errors.As(err, &ee) || ee.ExitStatus() != want {
				t.Errorf("%q: %v, want exit status %d", cmd, err, want)
			}
		})
	}
	wg.Wait()
	err = newSession(t, cl).Run("exit 7")
	if st := exitError(t, err).ExitStatus(); st != 7 {
		t.Errorf("exit 7: status %d", st)
	}
	// The brief's case, on a pty too.
	s := newSession(t, cl)
	if err := s.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Run("sh -c 'sleep 0.2 & exit 0'; exit 3"); exitError(t, err).ExitStatus() != 3 {
		t.Errorf("pty: %v, want exit status 3", err)
	}
	close(stop)
	passes.Wait()

	// Every orphan ends, and the reaper (on SIGCHLD alone now) collects it.
	eventually(t, "no children of the sessions left", func() bool { return len(sessionChildren()) == 0 })
}

// The reaper leaves alone the children that other code of the process
// starts with os/exec in the process's own session (the inproc runtime runs
// Serve inside the server).
func TestReaperSparesOtherChildren(t *testing.T) {
	asInit(t, true)
	a := startAgent(t, nil)
	_ = newSession(t, a.dial(t)).Run("true") // the reaper runs
	cmd := exec.Command("sh", "-c", "exit 3")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the child to exit", func() bool { return zombieChild(cmd.Process.Pid) })
	orphans.reap()
	_ = newSession(t, a.dial(t)).Run("true") // and again, on SIGCHLD
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait: %v, want exit status 3", err)
	}
}

// A process that is not init does not reap: where the agent is not PID 1,
// init or a subreaper above it collects orphans.
func TestReaperOnlyAsInit(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("the test process is init")
	}
	release := orphans.hold()
	defer release()
	orphans.hmu.Lock()
	running := orphans.holders > 0
	orphans.hmu.Unlock()
	if running {
		t.Fatal("the reaper runs in a process that is not init")
	}
}
