package agent

import (
	"bytes"
	"os"
	"strconv"
	"sync"
)

// ChildOOMScoreAdj is the oom_score_adj of every process the agent starts:
// the OOM killer's first choice, so that a session's memory hog is killed
// before the agent that serves it (the oci runtime starts the agent at 500)
// and long before the host's own processes.
const ChildOOMScoreAdj = 1000

const selfOOMScoreAdj = "/proc/self/oom_score_adj"

// oomMu serialises the starts that raise the process's score.
var oomMu sync.Mutex

// startRaised runs start, which forks and execs a child, with this
// process's oom_score_adj raised to ChildOOMScoreAdj, so that the child
// has that score from its first instruction, before it can allocate or
// fork. The score is the process's, not a thread's, so starts take turns;
// the agent's own score comes back once the child exists. Raising needs no
// privilege, and neither does going back down to the score a privileged
// process (runc) set; where the agent cannot go back, it says so once and
// stays as likely a victim as its children.
func startRaised(start func() error) error {
	oomMu.Lock()
	defer oomMu.Unlock()
	if oomStuck {
		return start()
	}
	old, err := os.ReadFile(selfOOMScoreAdj)
	raised := []byte(strconv.Itoa(ChildOOMScoreAdj))
	if err != nil || bytes.Equal(bytes.TrimSpace(old), raised) || os.WriteFile(selfOOMScoreAdj, raised, 0) != nil {
		return start()
	}
	err = start()
	if rerr := os.WriteFile(selfOOMScoreAdj, bytes.TrimSpace(old), 0); rerr != nil {
		oomStuck = true
		os.Stderr.WriteString("agent: cannot lower its oom_score_adj back after starting a child (" + rerr.Error() + "); it stays at " + string(raised) + "\n")
	}
	return err
}

// oomStuck is set once the agent could not lower its score again.
var oomStuck bool
