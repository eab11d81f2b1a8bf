package agent

import (
	"os"
	"strconv"
)

// ChildOOMScoreAdj is the oom_score_adj of every process the agent starts:
// the OOM killer's first choice, so that a session's memory hog is killed
// before the agent that serves it (the oci runtime starts the agent at 500)
// and long before the host's own processes.
const ChildOOMScoreAdj = 1000

// raiseOOMScore sets a child's oom_score_adj to ChildOOMScoreAdj. Raising
// needs no privilege; a failure (no /proc) only leaves the child as likely
// a victim as the agent.
func raiseOOMScore(pid int) {
	_ = os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte(strconv.Itoa(ChildOOMScoreAdj)), 0)
}
