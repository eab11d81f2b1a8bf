package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// createSession answers with the running session (201), or, for a
// request that may wait, with a stream of sdk.SessionEvent lines: queue
// progress, then the session or a problem.
func (a *API) createSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req sdk.CreateSessionRequest
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	notes, err := a.s.completeRequest(r.Context(), caller, &req) // request.go
	if err != nil {
		return err
	}
	if req.Wait <= 0 && !req.Progress {
		sess, err := a.s.createSession(r.Context(), caller, req, nil)
		if err != nil {
			return err
		}
		out := a.s.toSDK(sess)
		out.Warnings = append(notes, a.s.warnings(r.Context(), sess)...)
		httpapi.Write(w, http.StatusCreated, out)
		return nil
	}
	stream := httpapi.NewStream(w)
	var mu sync.Mutex // a pull reports from its own goroutine
	sess, err := a.s.createSession(r.Context(), caller, req, func(ev sdk.SessionEvent) {
		mu.Lock()
		defer mu.Unlock()
		stream.Send(ev)
	})
	if err != nil {
		p := httpapi.ProblemFor(r, a.log, err)
		stream.Send(sdk.SessionEvent{Problem: &p})
		return nil
	}
	out := a.s.toSDK(sess)
	out.Warnings = append(notes, a.s.warnings(r.Context(), sess)...)
	stream.Send(sdk.SessionEvent{Session: &out})
	return nil
}

// listSessions returns the caller's sessions; with ?all=true, an org
// admin gets everyone's.
func (a *API) listSessions(w http.ResponseWriter, r *http.Request, caller store.User) error {
	f := store.SessionFilter{UserID: caller.ID}
	if r.URL.Query().Get("all") == "true" {
		if authz.OrgAdmin(callerOf(caller)) != authz.Allowed {
			return httpapi.Errorf(http.StatusForbidden, "only organisation admins can list everyone's sessions; drop --all-users to see your own")
		}
		f.UserID = 0
	}
	if r.URL.Query().Get("active") == "true" {
		f.ActiveOnly = true
	}
	list, err := a.s.store.ListSessions(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]sdk.Session, 0, len(list))
	for _, s := range list {
		out = append(out, a.s.toSDK(s))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// sessionFor reads a session, by id or by the name of one of the
// caller's detached runs, and checks the caller's right to it.
func (a *API) sessionFor(r *http.Request, caller store.User, check func(authz.Caller, int64, authz.ProjectRole) authz.Decision, forbidden string) (store.Session, error) {
	id := r.PathValue("id")
	sess, err := a.s.store.Session(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) && validRunName(id) == nil {
		sess, err = a.s.namedRun(r.Context(), caller, id)
	}
	if errors.Is(err, store.ErrNotFound) {
		return store.Session{}, errSessionNotFound(id)
	}
	if err != nil {
		return store.Session{}, err
	}
	role, err := a.s.store.MemberRole(r.Context(), sess.ProjectID, caller.ID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Session{}, err
	}
	if err := decide(check(callerOf(caller), sess.UserID, authz.ProjectRole(role)), forbidden, errSessionNotFound(id)); err != nil {
		return store.Session{}, err
	}
	return sess, nil
}

// maxDetachWait bounds how long ?detached= holds a request.
const maxDetachWait = 5 * time.Second

// getSession returns a session. With ?detached=N it first waits until
// attachment N (from the connect response) is fully detached, so that a
// CLI leaving a session sees the end it caused.
func (a *API) getSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	sess, err := a.sessionFor(r, caller, authz.ViewSession, "")
	if err != nil {
		return err
	}
	if v := r.URL.Query().Get("detached"); v != "" {
		// An attachment this session does not have open is detached.
		if attachment, open := a.s.attachmentIn(sess.ID, v); open {
			ctx, cancel := context.WithTimeout(r.Context(), maxDetachWait)
			a.s.waitDetached(ctx, attachment)
			cancel()
		}
		if sess, err = a.s.store.Session(r.Context(), sess.ID); err != nil {
			return err
		}
	}
	httpapi.Write(w, http.StatusOK, a.s.toSDK(sess))
	return nil
}

// stopSession ends a session: `stopped` when its owner asks, `admin` when
// an administrator stops someone else's. A reason (?reason=TEXT, or a JSON
// body {"reason": TEXT}) is recorded in the audit log as session.stop and
// shown in the session's open shells before it ends.
func (a *API) stopSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	sess, err := a.sessionFor(r, caller, authz.StopSession, "")
	if err != nil {
		return err
	}
	why, err := stopReason(w, r)
	if err != nil {
		return err
	}
	if lifecycle.Final(sess.State) {
		httpapi.Write(w, http.StatusOK, a.s.toSDK(sess))
		return nil
	}
	reason := sdk.ReasonStopped
	if sess.UserID != caller.ID {
		reason = sdk.ReasonAdmin
	}
	if why != "" {
		a.s.tellStop(r.Context(), sess, caller, reason, why)
	}
	if err := a.s.endSession(r.Context(), sess.ID, reason, caller.Name, a.s.now()); err != nil {
		return err
	}
	sess, err = a.s.store.Session(r.Context(), sess.ID)
	if err != nil {
		return err
	}
	// Stopped, but its end not yet recorded (the store cannot write):
	// stopping, not running.
	httpapi.Write(w, http.StatusOK, a.s.stoppedState(a.s.toSDK(sess)))
	return nil
}

// stopReason reads a stop's reason: ?reason=, or else a JSON body
// {"reason"}; trimmed, at most sdk.MaxStopReason characters of one line
// (it is written into terminals, where a control character would be a
// command to the terminal).
func stopReason(w http.ResponseWriter, r *http.Request) (string, error) {
	why := r.URL.Query().Get("reason")
	if why == "" && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		var body struct {
			Reason string `json:"reason"`
		}
		if err := httpapi.Read(w, r, &body); err != nil {
			return "", err
		}
		why = body.Reason
	}
	why = strings.TrimSpace(why)
	switch {
	case !utf8.ValidString(why):
		return "", httpapi.Errorf(http.StatusBadRequest, "the stop reason is not valid UTF-8; send it as text")
	case strings.IndexFunc(why, unicode.IsControl) >= 0:
		return "", httpapi.Errorf(http.StatusBadRequest, "the stop reason holds a control character (a line break, tab or escape); give it as one line of plain text")
	case utf8.RuneCountInString(why) > sdk.MaxStopReason:
		return "", httpapi.Errorf(http.StatusBadRequest, "the stop reason has %d characters; shorten it to %d", utf8.RuneCountInString(why), sdk.MaxStopReason)
	}
	return why, nil
}

// tellStop records why the caller stops the session (audit session.stop,
// before its session.end) and tells its open shells. Neither may keep the
// session running: a store that cannot write or an agent that cannot be
// reached is logged, and the stop goes on.
func (s *Server) tellStop(ctx context.Context, sess store.Session, caller store.User, reason, why string) {
	err := s.store.InTx(ctx, func(tx store.Store) error {
		return s.audit(ctx, tx, caller.Name, "session.stop", sess.Project, sess.ID, nil, map[string]any{"reason": reason, "message": why})
	})
	if err != nil {
		s.storeWrote(err)
		s.log.Error("record the reason of a stop; stopping all the same", "session_id", sess.ID, "err", err)
	}
	if sess.State != sdk.StateRunning {
		return
	}
	by := caller.Name
	if reason == sdk.ReasonStopped {
		by = "you"
	}
	nctx, cancel := context.WithTimeout(ctx, stopNoticeTimeout)
	defer cancel()
	s.notice(nctx, sess.ID, s.liveFor(nctx, sess), fmt.Sprintf("this session is being stopped by %s: %s", by, why))
}

// stopNoticeTimeout bounds how long a stop waits to tell the shells.
const stopNoticeTimeout = 3 * time.Second

// toSDK is the session as the API shows it, its backend named even when
// the record predates backends (a queued session has none yet).
func (srv *Server) toSDK(s store.Session) sdk.Session {
	backend := ""
	if s.Backend != "" || gpuCount(s) > 0 {
		backend = srv.backendNameOf(s)
	}
	out := sdk.Session{
		Backend: backend, Node: s.Node,
		ID: s.ID, Project: s.Project, User: s.User, State: s.State,
		GPUType: s.GPUType, Region: s.Region, GPUs: s.GPUs, Image: s.Image,
		Attachments: s.Attachments, DetachGrace: sdk.Duration(s.DetachGrace), CreatedAt: s.CreatedAt.UTC(),
		StartedAt: timePtr(s.StartedAt), EndedAt: timePtr(s.EndedAt),
		EndReason: s.EndReason, EndedBy: s.EndActor, Error: s.Error,
		Name: s.Name, Command: s.Command, ExitStatus: s.ExitStatus, ExitSignal: s.ExitSignal, LogBytes: s.LogBytes,
	}
	if out.GPUs == nil {
		out.GPUs = []string{}
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}
