package testutil

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The host's processes as /proc shows them: the local runtime's shells
// and agents are processes of the host the tests run on.

// ProcessesWith returns this host's live processes whose command line
// (NUL-separated arguments) holds marker.
func ProcessesWith(marker string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err == nil && bytes.Contains(b, []byte(marker)) && ProcessAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ProcessAlive reports whether pid is a process that has not ended: one
// that exists and is no zombie.
func ProcessAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	f := procStat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// InForeground reports whether pid's process group holds its terminal:
// the group that Ctrl-C on that terminal signals.
func InForeground(pid int) bool {
	f := procStat(pid)
	return len(f) > 5 && f[2] == f[5]
}

// ParentOf returns pid's parent process, or 0 where pid cannot be read.
func ParentOf(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// procStat is the fields of /proc/pid/stat after the command (state ppid
// pgrp session tty_nr tpgid ...), or none where it cannot be read.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}
