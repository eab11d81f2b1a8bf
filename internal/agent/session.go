package agent

import (
	"context"
	"io"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/sdk"
)

// Payloads of "session" channel requests (RFC 4254 section 6).
type (
	ptyRequest struct {
		Term                         string
		Columns, Rows, Width, Height uint32
		Modes                        string
	}
	windowChange struct{ Columns, Rows, Width, Height uint32 }
)

// session is one "session" channel: requests before "shell" or "exec"
// shape the child, the ones after steer it.
type session struct {
	srv  *server
	ch   ssh.Channel
	env  []string      // from "env" requests
	term string        // TERM from "pty-req"
	size *windowChange // nil without "pty-req"
	proc *process      // nil until "shell" or "exec"
	sftp bool          // the "sftp" subsystem runs instead of a process
	conn *connState    // the connection the channel belongs to
	dir  string        // where a file copy starts instead of the usual place ("": usual)
	// refused is set when a file copy is refused (see copyPlace): the
	// channel reports why on stderr and exits 1 instead.
	refused bool
	// kept is the kept shell (keep.go) this channel asked for or resumed;
	// its process outlives the channel.
	kept *keptShell
	wg   sync.WaitGroup

	// Notices go to the pty's output, else to stderr, a stream that the
	// child's output shares: outMu serialises the writes to it.
	notices    io.Writer
	outMu      sync.Mutex
	ended      bool        // under outMu: the exit is being reported, no more notices
	noticeBusy atomic.Bool // a notice is being written
}

func (s *server) serveSession(ctx context.Context, nc ssh.NewChannel, cs *connState) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	ss := &session{srv: s, ch: ch, conn: cs}
	for req := range reqs {
		switch req.Type {
		case sdk.KeepRequest:
			ok := ss.keep()
			if req.WantReply {
				_ = req.Reply(ok, nil)
			}
			continue
		case sdk.ResumeRequest:
			k, _ := ss.resume(req.Payload)
			if req.WantReply {
				_ = req.Reply(k != nil, nil)
			}
			// Only after the reply, which the replay must not overtake.
			if k != nil {
				k.attach(ss)
			}
			continue
		}
		idle := ss.proc == nil && !ss.sftp && !ss.refused
		ok := ss.handle(ctx, req)
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
		// Only after the reply, which the exit status must not overtake.
		if idle && ss.proc != nil && ss.kept != nil {
			ss.kept.started(ctx, ss)
		} else if idle && ss.proc != nil {
			ss.wg.Go(func() { ss.run(ctx) })
		}
		if idle && ss.sftp {
			ss.wg.Go(ss.serveSFTP)
		}
		if idle && ss.refused {
			ss.wg.Go(ss.refuseCopy)
		}
	}
	// The peer closed the channel, or the connection is gone.
	_ = ch.Close()
	switch {
	case ss.kept != nil: // the shell runs on, detached
		ss.kept.detach(ss)
	case ss.proc != nil:
		ss.proc.hangup(ctx)
	}
	ss.wg.Wait()
}

func (ss *session) handle(ctx context.Context, req *ssh.Request) bool {
	switch req.Type {
	case "env":
		var kv struct{ Name, Value string }
		if ss.proc != nil || ssh.Unmarshal(req.Payload, &kv) != nil {
			return false
		}
		ss.env = append(ss.env, kv.Name+"="+kv.Value)
		return true
	case "pty-req":
		var pr ptyRequest
		if ss.proc != nil || ssh.Unmarshal(req.Payload, &pr) != nil {
			return false
		}
		ss.term, ss.size = pr.Term, &windowChange{pr.Columns, pr.Rows, pr.Width, pr.Height}
		return true
	case "window-change":
		var wc windowChange
		if ssh.Unmarshal(req.Payload, &wc) != nil {
			return false
		}
		if ss.proc != nil { // a resumed channel has a pty without "pty-req"
			return ss.proc.tty != nil && setWinsize(ss.proc.tty, &wc) == nil
		}
		if ss.size == nil {
			return false
		}
		*ss.size = wc
		return true
	case "signal":
		var m struct{ Name string }
		// Once the child is reaped its pid may belong to someone else.
		if ss.proc == nil || ss.proc.exited() || ssh.Unmarshal(req.Payload, &m) != nil {
			return false
		}
		sig, ok := parseSignal(m.Name)
		return ok && ss.proc.signal(sig) == nil
	case "shell":
		ss.conn.usedForMore()
		return ss.start(ctx, nil)
	case "exec":
		var m struct{ Command string }
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false
		}
		if !isCopyCommand(m.Command) {
			ss.conn.usedForMore()
		} else if !ss.placeCopy() {
			return true
		}
		return ss.start(ctx, []string{"-c", m.Command})
	case "subsystem":
		var m struct{ Name string }
		if ss.proc != nil || ss.sftp || ss.refused || ctx.Err() != nil || ssh.Unmarshal(req.Payload, &m) != nil || m.Name != "sftp" {
			return false
		}
		if !ss.placeCopy() {
			return true
		}
		ss.sftp = true
		return true
	default:
		return false
	}
}

// start runs the shell with args, like sshd: `shell -c CMD` for exec, the
// bare shell (interactive on a pty, not a login shell) for "shell".
func (ss *session) start(ctx context.Context, args []string) bool {
	if ss.proc != nil || ss.sftp || ss.refused || ctx.Err() != nil {
		return false
	}
	s := ss.srv
	cmd := s.command(args)
	if ss.dir != "" {
		cmd.Dir = ss.dir
	}
	if ss.term != "" {
		cmd.Env = append(slices.Clip(cmd.Env), "TERM="+ss.term)
	}
	cmd.Env = append(slices.Clip(cmd.Env), ss.env...) // later entries win
	p, err := startProcess(cmd, ss.size)
	if err != nil {
		s.log.Warn("start failed", "err", err)
		return false
	}
	s.log.Debug("started", "pid", p.pid(), "pty", p.tty != nil)
	ss.proc = p
	if ss.kept != nil {
		return true // its notices go into its output (keptShell.notice)
	}
	ss.notices = ss.ch.Stderr()
	if p.tty != nil {
		ss.notices = ss.ch
	}
	s.register(ss)
	return true
}

// command runs the session's shell with args, in the session's directory
// and environment (shared: append to a clipped Env).
func (s *server) command(args []string) *exec.Cmd {
	cmd := exec.Command(s.shell, args...)
	cmd.Dir = s.cfg.Dir
	cmd.Env = s.environ()
	return cmd
}

// run pumps the child's I/O, then reports its exit like sshd: all output
// first, then exit-status or exit-signal, then close.
func (ss *session) run(ctx context.Context) {
	p, act := ss.proc, &ss.srv.activity
	ss.wg.Go(func() { p.copyIn(ss.ch, act) })
	// The child shares the notice stream (the pty's output, else stderr).
	stdout, stderr := io.Writer(ss.ch), io.Writer(ss.ch.Stderr())
	if p.tty != nil {
		stdout = lockedWriter{&ss.outMu, stdout}
	} else {
		stderr = lockedWriter{&ss.outMu, stderr}
	}
	var out sync.WaitGroup
	out.Go(func() { p.copyOut(stdout, p.outputs[0], act) })
	if len(p.outputs) > 1 {
		out.Go(func() { p.copyOut(stderr, p.outputs[1], act) })
	}
	state := p.wait()
	out.Wait()
	ss.srv.unregister(ss)
	p.close()
	name, payload := exitMessage(state)
	_, _ = ss.ch.SendRequest(name, false, payload)
	_ = ss.ch.Close()
	ss.srv.linger(ctx, p.pid())
}

// placeCopy decides where the file copy this channel asks for goes (see
// copyPlace), and reports false when it is refused.
func (ss *session) placeCopy() bool {
	if ss.proc != nil || ss.sftp || ss.refused {
		return true // start refuses it
	}
	dir, ok := ss.srv.copyPlace(ss.conn)
	ss.dir, ss.refused = dir, !ok
	if !ok {
		ss.srv.log.Info("file copy refused: its files would be lost with the session")
	}
	return ok
}

// refuseCopy tells the client why its copy was refused, and fails it.
func (ss *session) refuseCopy() {
	_, _ = io.WriteString(ss.ch.Stderr(), ss.srv.copyRefusal())
	_, _ = ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{1}))
	_ = ss.ch.Close()
}
