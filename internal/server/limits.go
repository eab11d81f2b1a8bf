package server

import (
	"context"
	"fmt"
	"time"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/gpu"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// maxWarningLead is how long before an idle or lifetime end the user is
// warned in their shell; short limits (as in tests) warn at half-time.
const maxWarningLead = time.Minute

func warningLead(limit time.Duration) time.Duration {
	return min(maxWarningLead, limit/2)
}

// refreshLimits copies the idle timeout and max lifetime of each running
// session's project into memory: of one project's sessions, when one of
// them starts or is claimed, or of all (projectID 0) when a project's or the
// organisation's policy changes, so that changed limits apply to running
// sessions too.
func (s *Server) refreshLimits(ctx context.Context, projectID int64) {
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		s.log.Error("read org policy", "err", err)
		return
	}
	var projects []store.Project
	if projectID != 0 {
		var p store.Project
		p, err = s.store.ProjectByID(ctx, projectID)
		projects = []store.Project{p}
	} else {
		projects, err = s.store.ListProjects(ctx)
	}
	if err != nil {
		s.log.Error("read projects", "err", err)
		return
	}
	eff := map[int64]policy.Effective{}
	for _, p := range projects {
		eff[p.ID] = policy.Resolve(org, p.Settings)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.live {
		e, ok := eff[l.projectID]
		if !ok {
			continue
		}
		if l.idleTimeout != e.IdleTimeout {
			l.idleTimeout, l.warnedIdle = e.IdleTimeout, false
		}
		if l.maxLifetime != e.MaxLifetime {
			l.maxLifetime, l.warnedLifetime = e.MaxLifetime, false
		}
	}
}

// limitCheckInterval is how often idle and lifetime limits are checked,
// and limitRefreshInterval how often the leader reads every project's
// limits again (a change made through this replica applies at once).
const (
	limitCheckInterval   = 500 * time.Millisecond
	limitRefreshInterval = 2 * time.Second
)

type limitCheck struct {
	id          string
	l           *liveSession
	idleTimeout time.Duration
	maxLifetime time.Duration
	startedAt   time.Time
}

// checkLimits ends sessions past their max lifetime or idle timeout, and
// warns in their shells before it does.
func (s *Server) checkLimits(ctx context.Context) error {
	running, err := s.runningSessions(ctx)
	if err != nil {
		return err
	}
	// A policy changed through another replica reaches the limits cached
	// here within limitRefreshInterval.
	if s.now().Sub(s.limitsRead) >= limitRefreshInterval {
		s.limitsRead = s.now()
		s.refreshLimits(ctx, 0)
	}
	var checks []limitCheck
	for id, sess := range running {
		if sess.UserID == s.warmUser.ID || s.endingHere(id) {
			continue
		}
		l := s.liveFor(ctx, sess)
		s.mu.Lock()
		idle := l.idleTimeout
		if sess.Command != "" {
			idle = 0 // a detached run is busy while its command runs, and ends when it exits
		}
		if idle > 0 || l.maxLifetime > 0 {
			checks = append(checks, limitCheck{id, l, idle, l.maxLifetime, sess.StartedAt})
		}
		s.mu.Unlock()
	}
	for _, c := range checks {
		now := s.now()
		if c.maxLifetime > 0 {
			left := c.startedAt.Add(c.maxLifetime).Sub(now)
			if left <= 0 {
				s.endForLimit(ctx, c.id, sdk.ReasonLifetime, now)
				continue
			}
			if left <= warningLead(c.maxLifetime) && s.firstWarning(c.l, &c.l.warnedLifetime) {
				s.notice(ctx, c.id, c.l, fmt.Sprintf("this session reaches its maximum lifetime of %s in %s and will end then", c.maxLifetime, left.Round(time.Second)))
			}
		}
		if c.idleTimeout > 0 {
			s.checkIdle(ctx, c, now)
		}
	}
	return nil
}

func (s *Server) checkIdle(ctx context.Context, c limitCheck, now time.Time) {
	ctl, err := s.control(ctx, c.id, c.l)
	if err != nil {
		s.log.Warn("read session activity", "session_id", c.id, "err", err)
		return
	}
	last, err := ctl.LastActivity(ctx)
	if err != nil {
		s.dropControl(c.l)
		s.log.Warn("read session activity", "session_id", c.id, "err", err)
		return
	}
	idle := now.Sub(last)
	lead := warningLead(c.idleTimeout)
	if idle < c.idleTimeout-lead {
		s.mu.Lock()
		c.l.warnedIdle = false
		s.mu.Unlock()
		return
	}
	// Work on the GPU counts as activity even when the shell is quiet.
	if busy, err := gpu.Busy(c.l.gpus); busy {
		return
	} else if err != nil {
		s.log.Debug("read GPU utilisation", "session_id", c.id, "err", err)
	}
	if idle >= c.idleTimeout {
		s.endForLimit(ctx, c.id, sdk.ReasonIdle, now)
		return
	}
	if s.firstWarning(c.l, &c.l.warnedIdle) {
		s.notice(ctx, c.id, c.l, fmt.Sprintf("this session has been idle for %s and will end in %s unless you use it (idle timeout %s)",
			idle.Round(time.Second), (c.idleTimeout-idle).Round(time.Second), c.idleTimeout))
	}
}

// firstWarning reports whether a warning is due, marking it shown.
func (s *Server) firstWarning(l *liveSession, warned *bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *warned {
		return false
	}
	*warned = true
	return true
}

func (s *Server) endForLimit(ctx context.Context, id, reason string, at time.Time) {
	if l := s.liveSession(id); l != nil {
		s.notice(ctx, id, l, "this session is ending: "+map[string]string{sdk.ReasonIdle: "idle timeout", sdk.ReasonLifetime: "maximum lifetime"}[reason])
	}
	if err := s.endSession(ctx, id, reason, "system", at); err != nil {
		s.log.Error("end session for a limit", "session_id", id, "reason", reason, "err", err)
	}
}

func (s *Server) liveSession(id string) *liveSession {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[id]
}

// notice shows msg in every shell of the session; failures only log.
func (s *Server) notice(ctx context.Context, id string, l *liveSession, msg string) {
	ctl, err := s.control(ctx, id, l)
	if err == nil {
		nctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = ctl.Notice(nctx, msg)
		cancel()
	}
	if err != nil {
		s.log.Warn("notify session", "session_id", id, "err", err)
		return
	}
	s.log.Info("session notified", "session_id", id, "notice", msg)
}

// control returns the session's control connection, opening it on first use.
func (s *Server) control(ctx context.Context, id string, l *liveSession) (*agent.Control, error) {
	s.mu.Lock()
	ctl := l.ctl
	s.mu.Unlock()
	if ctl != nil {
		return ctl, nil
	}
	conn, err := s.backendNamed(l.backend).Runtime.Connect(ctx, id)
	if err != nil {
		return nil, err
	}
	ctl, err = agent.DialControl(conn, l.secret)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.ctl != nil { // another caller won the race
		ctl.Close()
		return l.ctl, nil
	}
	l.ctl = ctl
	return ctl, nil
}

func (s *Server) dropControl(l *liveSession) {
	s.mu.Lock()
	ctl := l.ctl
	l.ctl = nil
	s.mu.Unlock()
	if ctl != nil {
		ctl.Close()
	}
}
