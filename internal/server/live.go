package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/gpu"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// The live sessions view, GET /api/v1/sessions/live: a stream of
// server-sent events, each an sdk.LiveSnapshot of the active sessions the
// caller may see, and why each is still alive. The first comes at once;
// the next whenever a shown field changed, looked at every
// Config.LiveInterval and whenever a queue moves on this replica.

const (
	// DefaultLiveInterval is how often the live view is computed again.
	DefaultLiveInterval = 2 * time.Second
	// liveKeepalive is the longest the stream stays silent: a comment
	// then keeps proxies from closing it.
	liveKeepalive = 15 * time.Second
	// liveAskTimeout bounds one question to a session's agent (its last
	// activity), liveAskFresh how long its answer is reused (a page open
	// does not hammer agents; several pages share the answers), and
	// liveAskers how many agents are asked at once.
	liveAskTimeout = 2 * time.Second
	liveAskFresh   = 5 * time.Second
	liveAskers     = 8
)

// liveInterval is Config.LiveInterval, or its default.
func (s *Server) liveInterval() time.Duration {
	if s.cfg.LiveInterval > 0 {
		return s.cfg.LiveInterval
	}
	return DefaultLiveInterval
}

var errLiveClosing = httpapi.Errorf(http.StatusServiceUnavailable, "this server is shutting down; reload the page to reach another")

// liveSessions streams the live view. With ?all=1 (or true) it shows every
// active session the caller may see, as the session pages do (authz.
// ViewSession: all of them for organisation admins, their projects' for
// project admins, their own for developers); without it, the caller's own.
func (a *API) liveSessions(w http.ResponseWriter, r *http.Request, caller store.User) error {
	all := false
	switch v := r.URL.Query().Get("all"); v {
	case "", "0", "false":
	case "1", "true":
		all = true
	default:
		return httpapi.Errorf(http.StatusBadRequest, "all=%q is not 1 or 0; ask with ?all=1 for every session you may see", v)
	}
	// Counted as the server's work: Close cancels s.ctx, which ends the
	// stream, and waits for it, so nothing reads the store after Close.
	if !a.s.enter() {
		return errLiveClosing
	}
	defer a.s.leave()
	ctx := r.Context()
	snap, err := a.s.liveSnapshot(ctx, caller, all)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not hold events back
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	var last []byte
	send := func(snap sdk.LiveSnapshot) bool {
		shown, _ := json.Marshal(snap.Sessions)
		if last != nil && bytes.Equal(shown, last) {
			return true
		}
		last = shown
		b, _ := json.Marshal(snap)
		return write(append(append([]byte("data: "), b...), '\n', '\n'))
	}
	if !send(snap) {
		return nil
	}
	tick := time.NewTicker(a.s.liveInterval())
	defer tick.Stop()
	quiet := time.NewTimer(liveKeepalive)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.s.ctx.Done(): // Close
			return nil
		case <-a.s.qclosing: // Serve's shutdown: the page reconnects to the next server
			return nil
		case <-quiet.C:
			if !write([]byte(": keepalive\n\n")) {
				return nil
			}
			quiet.Reset(liveKeepalive)
			continue
		case <-tick.C:
		case <-a.s.queueWatch():
		}
		snap, err := a.s.liveSnapshot(ctx, caller, all)
		if err != nil {
			if ctx.Err() == nil && a.s.ctx.Err() == nil {
				a.log.Warn("live view; tried again at the next tick", "user", caller.Name, "err", err)
			}
			continue
		}
		before := last
		if !send(snap) {
			return nil
		}
		if !bytes.Equal(before, last) {
			quiet.Reset(liveKeepalive)
		}
	}
}

// liveSnapshot is the live view for the caller as it stands now.
func (s *Server) liveSnapshot(ctx context.Context, caller store.User, all bool) (sdk.LiveSnapshot, error) {
	f := store.SessionFilter{ActiveOnly: true, UserID: caller.ID}
	if all {
		f.UserID = 0
	}
	list, err := s.store.ListSessions(ctx, f)
	if err != nil {
		return sdk.LiveSnapshot{}, err
	}
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return sdk.LiveSnapshot{}, err
	}
	roles := map[int64]authz.ProjectRole{}
	limits := map[int64]policy.Effective{}
	var shown []store.Session
	for _, sess := range list {
		if sess.UserID != caller.ID {
			role, ok := roles[sess.ProjectID]
			if !ok {
				if role, _, err = s.roleIn(ctx, s.store, caller, sess.ProjectID); err != nil {
					return sdk.LiveSnapshot{}, err
				}
				roles[sess.ProjectID] = role
			}
			if authz.ViewSession(callerOf(caller), sess.UserID, role) != authz.Allowed {
				continue
			}
		}
		if _, ok := limits[sess.ProjectID]; !ok {
			p, err := s.store.ProjectByID(ctx, sess.ProjectID)
			if err != nil {
				return sdk.LiveSnapshot{}, err
			}
			limits[sess.ProjectID] = policy.Resolve(org, p.Settings)
		}
		shown = append(shown, sess)
	}
	slices.SortFunc(shown, func(a, b store.Session) int {
		return cmpTimeID(a.CreatedAt, b.CreatedAt, a.ID, b.ID)
	})
	asked := s.askAgents(ctx, shown)
	now := s.now()
	out := sdk.LiveSnapshot{At: now.UTC(), Sessions: []sdk.LiveSession{}}
	for _, sess := range shown {
		ls, err := s.liveSessionOf(ctx, sess, limits[sess.ProjectID], asked[sess.ID], now)
		if err != nil {
			return sdk.LiveSnapshot{}, err
		}
		out.Sessions = append(out.Sessions, ls)
	}
	return out, nil
}

func cmpTimeID(a, b time.Time, aID, bID string) int {
	if c := a.Compare(b); c != 0 {
		return c
	}
	return strings.Compare(aID, bID)
}

// liveSessionOf is one session of the live view.
func (s *Server) liveSessionOf(ctx context.Context, sess store.Session, eff policy.Effective, ag agentAnswer, now time.Time) (sdk.LiveSession, error) {
	ls := sdk.LiveSession{Session: s.toSDK(sess)}
	var position int
	switch sess.State {
	case sdk.StateQueued:
		var err error
		if position, err = s.store.QueuePosition(ctx, sess.ID); err != nil {
			return sdk.LiveSession{}, err
		}
	case sdk.StateRunning:
		if sess.Attachments > 0 {
			open, err := s.store.ListAttachments(ctx, sess.ID)
			if err != nil {
				return sdk.LiveSession{}, err
			}
			kinds := s.shellKinds(sess.ID) // those open through this replica
			for _, a := range open {
				kind := kinds[a.ID]
				if kind == "" {
					kind = "shell"
				}
				ls.Shells = append(ls.Shells, sdk.LiveAttachment{Kind: kind, OpenedAt: a.OpenedAt.UTC()})
			}
			slices.SortFunc(ls.Shells, func(a, b sdk.LiveAttachment) int { return a.OpenedAt.Compare(b.OpenedAt) })
		}
		ls.LastActivity, ls.GPUUtilization = ag.lastActivity, ag.utilization
		// A detached run's end is its command's exit: neither idleness nor
		// the detach grace ends it.
		job := sess.Command != ""
		if eff.IdleTimeout > 0 && ag.lastActivity != nil && !job {
			ls.IdleEndsAt = timePtr(ag.lastActivity.Add(eff.IdleTimeout))
		}
		if eff.MaxLifetime > 0 && !sess.StartedAt.IsZero() {
			ls.LifetimeEndsAt = timePtr(sess.StartedAt.Add(eff.MaxLifetime))
		}
		if len(ls.Shells) == 0 && sess.Attachments == 0 && !sess.DetachedAt.IsZero() && !s.isWarm(sess) && !job {
			ls.GraceEndsAt = timePtr(sess.DetachedAt.Add(sess.DetachGrace))
		}
	}
	ls.AliveBecause = s.aliveBecause(sess, ls, eff, position, now)
	return ls, nil
}

func (s *Server) isWarm(sess store.Session) bool { return sess.UserID == s.warmUser.ID }

// aliveBecause says in one sentence what keeps the session alive and what
// will end it.
func (s *Server) aliveBecause(sess store.Session, ls sdk.LiveSession, eff policy.Effective, position int, now time.Time) string {
	switch sess.State {
	case sdk.StateRequested:
		return "requested: being admitted"
	case sdk.StateQueued:
		out := fmt.Sprintf("queued: position %d", position)
		if sess.QueueReason != "" {
			out += ", " + strings.TrimSuffix(sess.QueueReason, ".")
		}
		if !sess.WaitUntil.IsZero() {
			out += "; gives up at " + clockTime(sess.WaitUntil, now)
		}
		return out
	case sdk.StateStarting:
		return "starting"
	case sdk.StateStopping:
		if sess.EndReason != "" {
			return "stopping (" + sess.EndReason + ")"
		}
		return "stopping"
	case sdk.StateRunning:
	default:
		return sess.State
	}
	if s.isWarm(sess) {
		return fmt.Sprintf("ready in project %s's warm pool, kept for the next shell that asks", sess.Project)
	}
	var parts []string
	job := sess.Command != ""
	if job {
		parts = append(parts, "a detached run: it ends when its command exits")
	}
	switch {
	case len(ls.Shells) > 0:
		parts = append(parts, shellsOpen(ls.Shells, now))
	case ls.GraceEndsAt != nil:
		parts = append(parts, "no shell open: ends at "+clockTime(*ls.GraceEndsAt, now)+" unless a shell reconnects (detach grace)")
	case !job:
		parts = append(parts, "no shell open")
	}
	if eff.IdleTimeout > 0 && !job {
		switch {
		case ls.LastActivity == nil:
			parts = append(parts, fmt.Sprintf("idle timeout %s, its activity unknown", shortDuration(eff.IdleTimeout)))
		case ls.GPUUtilization != nil && *ls.GPUUtilization > 0:
			parts = append(parts, fmt.Sprintf("its GPU is busy (%.0f%%), which counts as use", *ls.GPUUtilization))
		default:
			idle := now.Sub(*ls.LastActivity)
			phrase := "idle for under a minute"
			if idle >= time.Minute {
				phrase = "idle for " + shortDuration(idle.Truncate(time.Minute))
			}
			parts = append(parts, phrase+", ends at "+clockTime(*ls.IdleEndsAt, now)+" unless used")
		}
	}
	if ls.LifetimeEndsAt != nil {
		parts = append(parts, "lifetime ends "+clockTime(*ls.LifetimeEndsAt, now))
	}
	if eff.IdleTimeout <= 0 && ls.LifetimeEndsAt == nil && len(ls.Shells) > 0 {
		parts = append(parts, "no idle timeout or lifetime limit")
	}
	return strings.Join(parts, "; ")
}

// shellsOpen is "1 terminal open since 09:14 UTC" or "1 terminal and 2
// shells open, the first since 09:14 UTC"; shells are sorted by opening.
func shellsOpen(shells []sdk.LiveAttachment, now time.Time) string {
	counts := map[string]int{}
	var kinds []string
	for _, a := range shells {
		if counts[a.Kind] == 0 {
			kinds = append(kinds, a.Kind)
		}
		counts[a.Kind]++
	}
	slices.SortFunc(kinds, func(a, b string) int { return strings.Compare(b, a) }) // terminals first
	var named []string
	for _, k := range kinds {
		named = append(named, plural(counts[k], k))
	}
	since := clockTime(shells[0].OpenedAt, now)
	if len(shells) == 1 {
		return named[0] + " open since " + since
	}
	return strings.Join(named, " and ") + " open, the first since " + since
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// clockTime is t as "15:04 UTC", with the date when it is not today's.
func clockTime(t, now time.Time) string {
	t, now = t.UTC(), now.UTC()
	if y, m, d := t.Date(); y == now.Year() && m == now.Month() && d == now.Day() {
		return t.Format("15:04 UTC")
	}
	return t.Format("Jan 2 15:04 UTC")
}

// shortDuration is d as "45s", "3m", "2h5m" or "3d4h".
func shortDuration(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 24*time.Hour:
		if m := int(d%time.Hour) / int(time.Minute); m != 0 {
			return fmt.Sprintf("%dh%dm", int(d/time.Hour), m)
		}
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	if h := int(d%(24*time.Hour)) / int(time.Hour); h != 0 {
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), h)
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// agentAnswer is what a session's agent and GPUs said: nil fields are
// unknown.
type agentAnswer struct {
	lastActivity *time.Time
	utilization  *float64
}

// liveAnswers caches the agents' answers for the live view, by session.
type liveAnswers struct {
	mu      sync.Mutex
	answers map[string]cachedAnswer
}

type cachedAnswer struct {
	agentAnswer
	at time.Time // when it was asked (the wall clock: this is a cache)
}

// askAgents returns the last activity and GPU utilisation of the running
// sessions among list, asking the agents whose answer is not fresh (a few
// at a time, each for at most liveAskTimeout). An agent that cannot answer
// leaves its session's activity unknown.
func (s *Server) askAgents(ctx context.Context, list []store.Session) map[string]agentAnswer {
	out := map[string]agentAnswer{}
	running := map[string]bool{}
	var ask []store.Session
	c := &s.liveAnswers
	c.mu.Lock()
	if c.answers == nil {
		c.answers = map[string]cachedAnswer{}
	}
	wall := time.Now()
	for _, sess := range list {
		if sess.State != sdk.StateRunning || s.isWarm(sess) {
			continue
		}
		running[sess.ID] = true
		if a, ok := c.answers[sess.ID]; ok && wall.Sub(a.at) < liveAskFresh {
			out[sess.ID] = a.agentAnswer
			continue
		}
		ask = append(ask, sess)
	}
	c.mu.Unlock()
	if len(ask) > 0 {
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, liveAskers)
		for _, sess := range ask {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				a := s.askAgent(ctx, sess)
				mu.Lock()
				out[sess.ID] = a
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ctx.Err() == nil { // answers cut short by a page that left are not kept
		for _, sess := range ask {
			c.answers[sess.ID] = cachedAnswer{out[sess.ID], time.Now()}
		}
	}
	for id, a := range c.answers {
		if time.Since(a.at) > time.Minute && !running[id] { // ended, or no page asks
			delete(c.answers, id)
		}
	}
	return out
}

// askAgent asks one running session's agent for its last activity, and
// NVML for its GPUs' utilisation, through this replica's control
// connection (as the idle check does).
func (s *Server) askAgent(ctx context.Context, sess store.Session) agentAnswer {
	var a agentAnswer
	l := s.liveFor(ctx, sess)
	if u, ok := gpu.Utilization(sess.GPUs); ok {
		f := float64(u)
		a.utilization = &f
	}
	actx, cancel := context.WithTimeout(ctx, liveAskTimeout)
	defer cancel()
	ctl, err := s.control(actx, sess.ID, l)
	if err != nil {
		s.log.Debug("live view: read session activity", "session_id", sess.ID, "err", err)
		return a
	}
	last, err := ctl.LastActivity(actx)
	if err != nil {
		s.dropControl(l)
		s.log.Debug("live view: read session activity", "session_id", sess.ID, "err", err)
		return a
	}
	a.lastActivity = timePtr(last)
	return a
}
