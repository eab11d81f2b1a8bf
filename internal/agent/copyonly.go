package agent

import (
	"path"
	"strings"
	"sync"
)

// A connection that only copies files (scp, rsync, sftp) to a session of
// its own, as `scp f devgpu.PROJECT:` starts in the dedicated shell mode,
// would leave its files in a session that ends when the copy does. The
// agent sees which connections a session has had and what each asked
// for, so it knows such a copy: it lands in the user's persistent
// workspace when the session has one, and is refused with what to do
// otherwise. A copy on a connection that also runs something (VS Code,
// ssh with ControlMaster), or into a session that another connection uses
// or used (a shell, `devgpu cp` beside it, a run) or that runs a job (a
// detached run), goes where it asks.

// connState is what the agent knows of one SSH connection.
type connState struct {
	mu      sync.Mutex
	counted bool // it has opened a channel: s.users counts it
	other   bool // it opened a channel or ran a request that is not a file copy
}

// opened records that c opened a channel.
func (s *server) opened(c *connState) {
	c.mu.Lock()
	first := !c.counted
	c.counted = true
	c.mu.Unlock()
	if first {
		s.mu.Lock()
		s.users++
		s.mu.Unlock()
	}
}

// usedForMore records that c does more than copy files.
func (c *connState) usedForMore() {
	c.mu.Lock()
	c.other = true
	c.mu.Unlock()
}

// copyPlace says where a file copy on c goes: ok with dir "" for where it
// asks (also in a session with a job, whose files the copy is for), ok with the persistent workspace's dir when the copy would
// otherwise be lost with its session, or !ok when it must be refused
// (with no workspace to land in).
func (s *server) copyPlace(c *connState) (dir string, ok bool) {
	c.mu.Lock()
	other := c.other
	c.mu.Unlock()
	s.mu.Lock()
	alone := s.users == 1
	s.mu.Unlock()
	if other || !alone || s.currentJob() != nil {
		return "", true
	}
	env := s.environ()
	if ws := lookupEnv(env, "DEVGPU_WORKSPACE"); ws != "" && lookupEnv(env, "DEVGPU_WORKSPACE_READONLY") == "" {
		return ws, true
	}
	return "", false
}

// copyRefusal is what a refused copy tells the user.
func (s *server) copyRefusal() string {
	project := lookupEnv(s.environ(), "DEVGPU_PROJECT")
	if project == "" {
		project = "PROJECT"
	}
	return "devgpu: refused, so that your files are not lost: this connection only copies files, into a session of its own " +
		"that ends, with them, when the copy does (scp, rsync and sftp to devgpu." + project + " each start one). " +
		"Copy into a running session instead with `devgpu cp FILE SESSION:PATH` (start one with `devgpu shell`), " +
		"or ask a project admin for persistent workspaces (devgpu admin project update " + project + " --workspace).\r\n"
}

// isCopyCommand reports whether an exec request's command is the remote
// end of scp (scp -t, scp -f) or rsync (rsync --server).
func isCopyCommand(command string) bool {
	words := strings.Fields(command)
	if len(words) == 0 {
		return false
	}
	switch path.Base(words[0]) {
	case "scp":
		for _, w := range words[1:] {
			if w == "-t" || w == "-f" {
				return true
			}
		}
	case "rsync":
		for _, w := range words[1:] {
			if w == "--server" {
				return true
			}
		}
	}
	return false
}
