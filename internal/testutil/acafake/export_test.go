//go:build linux && !agentonly

package acafake

import "strings"

// Tracked reports whether the latest execution of job has recorded pid
// among its process's descendants: a test's way to know that the fake
// will end pid with the process.
func (f *Fake) Tracked(job string, pid int) bool {
	f.mu.Lock()
	j := f.jobs[strings.ToLower(job)]
	var e *execution
	if j != nil && len(j.executions) > 0 {
		e = j.executions[len(j.executions)-1]
	}
	f.mu.Unlock()
	if e == nil {
		return false
	}
	e.treeMu.Lock()
	defer e.treeMu.Unlock()
	_, ok := e.tracked[pid]
	return ok
}
