package agent

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Global requests that the control plane sends on its own connection to an
// agent (DialControl). Every other global request is refused.
const (
	// activityRequest asks for the time of the last user activity; the reply
	// carries activityReply.
	activityRequest = "activity@devgpu"
	// noticeRequest carries noticeMsg, a line for every open session.
	noticeRequest = "notice@devgpu"
	// setenvRequest sets a variable of the environment every later shell
	// and command starts with (the control plane uses it when a ready
	// session of a warm pool is handed to its user).
	setenvRequest = "setenv@devgpu"
)

type (
	activityReply struct{ UnixNano uint64 }
	noticeMsg     struct{ Message string }
)

// noticeTimeout bounds how long a notice request waits for its writes before
// it replies. A write to a client that does not read goes on in the
// background until the client reads or its channel goes away.
const noticeTimeout = time.Second

// activity is the time of the last user activity in the session, in unix
// nanoseconds: the last chunk of input from a client to a child, or of
// output from a child to a client. Protocol traffic and notices do not count.
// It is touched once per chunk read, before the chunk is passed on, so that
// whoever sees the bytes arrive sees the activity too.
type activity struct{ last atomic.Int64 }

func (a *activity) touch()          { a.last.Store(time.Now().UnixNano()) }
func (a *activity) load() time.Time { return time.Unix(0, a.last.Load()) }

// serveGlobal answers one connection's global requests: activity,
// notices, the environment and, on a control connection, the job; and
// "no" to everything else:
// keepalives, and "tcpip-forward" (ssh -R), because nothing outside the
// session may reach into it except through the control plane's tunnel.
func (s *server) serveGlobal(ctx context.Context, reqs <-chan *ssh.Request, control bool) {
	for req := range reqs {
		ok, payload := false, []byte(nil)
		switch req.Type {
		case activityRequest:
			ok, payload = true, ssh.Marshal(activityReply{uint64(s.activity.last.Load())})
		case noticeRequest:
			var m noticeMsg
			if ssh.Unmarshal(req.Payload, &m) == nil {
				s.notice(m.Message)
				ok = true
			}
		case setenvRequest:
			var m setenvMsg
			if ssh.Unmarshal(req.Payload, &m) == nil && m.Name != "" && !strings.Contains(m.Name, "=") {
				s.setEnv(m.Name, m.Value)
				ok = true
			}
		case jobStartRequest:
			// Only the control plane starts the job: a user's own would
			// turn off the idle exit and the redirect of copies, or run
			// another command in a detached run before the control plane.
			var m jobStartMsg
			if !control {
				s.log.Warn("job start refused: not the control plane's connection")
			} else if ssh.Unmarshal(req.Payload, &m) == nil && m.Command != "" {
				if st, err := s.startJob(ctx, m.Command); err == nil {
					ok = true
					payload, _ = json.Marshal(st)
				}
			}
		}
		if req.WantReply {
			_ = req.Reply(ok, payload)
		}
	}
}

// notice writes msg to every session of every connection that runs a shell
// or command, and waits for the writes at most noticeTimeout.
func (s *server) notice(msg string) {
	var pending []<-chan struct{}
	s.smu.Lock()
	for ss := range s.sessions {
		if done := ss.notify(msg); done != nil {
			pending = append(pending, done)
		}
	}
	n := len(s.sessions)
	s.smu.Unlock()
	// Kept shells take notices into their output, which never waits.
	for _, k := range s.kept.all() {
		k.notice(msg)
	}
	s.log.Debug("notice", "sessions", n, "writing", len(pending))
	t := time.NewTimer(noticeTimeout)
	defer t.Stop()
	for _, done := range pending {
		select {
		case <-done:
		case <-t.C:
			return
		}
	}
}

// register makes ss, whose child has just started, a receiver of notices.
// It runs before the reply to "shell" or "exec", so a notice sent after the
// client saw the reply reaches the session.
func (s *server) register(ss *session) {
	s.smu.Lock()
	defer s.smu.Unlock()
	s.sessions[ss] = struct{}{}
}

// unregister stops notices to ss, from ss.run. While ss is registered,
// ss.wg is either above zero (run is counted) or not being waited for (the
// request loop is between "shell"/"exec" and starting run), so notify may
// add to it.
func (s *server) unregister(ss *session) {
	s.smu.Lock()
	delete(s.sessions, ss)
	s.smu.Unlock()
	// Wait for a notice being written; one still waiting for outMu finds
	// ended set and drops its message, which must not follow the exit status.
	ss.outMu.Lock()
	ss.ended = true
	ss.outMu.Unlock()
}

// notify writes msg to the session's notice stream in the background and
// returns a channel closed when the write is done, or nil when it drops msg
// because the previous notice is still being written (the client does not
// read). Called with the server's smu held, while ss is registered.
func (ss *session) notify(msg string) <-chan struct{} {
	if !ss.noticeBusy.CompareAndSwap(false, true) {
		return nil
	}
	text := "[devgpu] " + msg + "\n"
	if ss.proc.tty != nil {
		text = "\r\n[devgpu] " + msg + "\r\n"
	}
	done := make(chan struct{})
	ss.wg.Go(func() {
		defer close(done)
		defer ss.noticeBusy.Store(false)
		ss.outMu.Lock()
		defer ss.outMu.Unlock()
		if !ss.ended {
			_, _ = io.WriteString(ss.notices, text)
		}
	})
	return done
}

// lockedWriter serialises the child's writes to the notice stream with the
// notices: x/crypto's writes to one stream of a channel must not overlap.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// setenvMsg is the payload of setenvRequest.
type setenvMsg struct {
	Name, Value string
}
