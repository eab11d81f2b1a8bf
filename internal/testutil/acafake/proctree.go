//go:build linux && !agentonly

package acafake

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// A replica's container holds every process its main process started,
// whatever session or process group they put themselves in (the agent
// starts each shell with Setsid: internal/agent/process.go), and they all
// end with the replica. The fake runs a replica as a local process, so it
// finds the rest by walking /proc by parent pid, and tells a process from
// a later one with the same pid by its start time (/proc/pid/stat field
// 22, starttime).

// proc is a process as /proc/pid/stat shows it.
type proc struct {
	pid, ppid int
	start     uint64 // clock ticks after boot
}

// readProc reads pid's parent and start time; ok is false where pid is
// gone or a zombie (which no signal can end).
func readProc(pid int) (p proc, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return proc{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return proc{}, false
	}
	// After the command: state ppid pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime ...
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return proc{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return proc{pid: pid, ppid: ppid, start: start}, true
}

// procTable is this host's live processes by parent pid.
func procTable() map[int][]proc {
	entries, _ := os.ReadDir("/proc")
	out := map[int][]proc{}
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			out[p.ppid] = append(out[p.ppid], p)
		}
	}
	return out
}

// descendants adds to into the live descendants of roots in table.
func descendants(table map[int][]proc, roots []int, into map[int]uint64) {
	for len(roots) > 0 {
		pid := roots[len(roots)-1]
		roots = roots[:len(roots)-1]
		for _, c := range table[pid] {
			if _, seen := into[c.pid]; !seen {
				into[c.pid] = c.start
				roots = append(roots, c.pid)
			}
		}
	}
}

// same reports whether pid is still the live process that started at
// start.
func same(pid int, start uint64) bool {
	p, ok := readProc(pid)
	return ok && p.start == start
}

// killAll SIGKILLs the processes of set that are still the ones it
// recorded, and every live descendant of them and of extra (pids the
// caller vouches for), stopping each first (SIGSTOP) so that none forks a
// child that the walk misses; it returns when the walk finds nothing new.
func killAll(set map[int]uint64, extra ...int) {
	frozen := map[int]uint64{}
	for pid, start := range set {
		if same(pid, start) && syscall.Kill(pid, syscall.SIGSTOP) == nil {
			frozen[pid] = start
		}
	}
	for range 16 {
		roots := append([]int(nil), extra...)
		for pid := range frozen {
			roots = append(roots, pid)
		}
		found := map[int]uint64{}
		descendants(procTable(), roots, found)
		grew := false
		for pid, start := range found {
			if _, ok := frozen[pid]; ok {
				continue
			}
			if syscall.Kill(pid, syscall.SIGSTOP) == nil {
				frozen[pid] = start
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	for pid, start := range frozen {
		if same(pid, start) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
