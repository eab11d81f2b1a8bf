package server

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Access changes that take effect at once: when a user is disabled, loses
// their last valid token, or is removed from a project, the same
// transaction that records the change marks their active sessions there
// `stopping` and audits it; then their open shells on this replica are cut
// and the sessions end with reason sdk.ReasonRevoked. Every connect checks
// the caller's membership again, so a removed member cannot attach.

// tokenKey carries the request's authenticated token in its context, for
// the handlers that mint tokens from it.
type tokenKey struct{}

func withToken(ctx context.Context, t store.Token) context.Context {
	return context.WithValue(ctx, tokenKey{}, t)
}

// callerToken is the token that authenticated the request.
func callerToken(r *http.Request) store.Token {
	t, _ := r.Context().Value(tokenKey{}).(store.Token)
	return t
}

// scoped applies a token's scope to its user: a developer-scoped token
// never carries organisation-admin rights.
func scoped(u store.User, t store.Token) store.User {
	if t.Scope == store.ScopeDeveloper {
		u.OrgAdmin = false
	}
	return u
}

// childToken caps a token to be minted with parent: it expires no later
// than parent and its scope is no wider. It refuses an explicit request
// for more than parent has.
func childToken(parent store.Token, expires time.Time, scope string) (time.Time, string, error) {
	if !parent.ExpiresAt.IsZero() {
		if !expires.IsZero() && expires.After(parent.ExpiresAt) {
			return time.Time{}, "", httpapi.Errorf(http.StatusForbidden,
				"a token cannot outlive the token that creates it, which expires %s; ask for a shorter expires_in", parent.ExpiresAt.UTC().Format(time.RFC3339))
		}
		if expires.IsZero() {
			expires = parent.ExpiresAt
		}
	}
	switch {
	case parent.Scope == store.ScopeDeveloper && scope == sdk.TokenScopeFull:
		return time.Time{}, "", httpapi.Errorf(http.StatusForbidden,
			"a developer-scoped token cannot create a full-scope token; create it with a full-scope token")
	case parent.Scope == store.ScopeDeveloper || scope == sdk.TokenScopeDeveloper:
		return expires, store.ScopeDeveloper, nil
	case scope == "" || scope == sdk.TokenScopeFull:
		return expires, store.ScopeFull, nil
	default:
		return time.Time{}, "", httpapi.Errorf(http.StatusBadRequest, "token scope %q is not %s or %s", scope, sdk.TokenScopeFull, sdk.TokenScopeDeveloper)
	}
}

// mayAttach refuses a shell to a caller who can no longer use the
// session's project (removed from it since the session started).
func (s *Server) mayAttach(ctx context.Context, caller store.User, sess store.Session) error {
	role, err := s.store.MemberRole(ctx, sess.ProjectID, caller.ID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if authz.UseProject(callerOf(caller), authz.ProjectRole(role)) != authz.Allowed {
		return errSessionNotFound(sess.ID)
	}
	return nil
}

// cutSessions, inside tx, marks the user's active sessions (in the project;
// every project for 0) stopping, reason revoked, so that nothing attaches
// to them any more, and returns their ids.
func (s *Server) cutSessions(ctx context.Context, tx store.Store, userID, projectID int64, actor string) ([]string, error) {
	active, err := tx.ListSessions(ctx, store.SessionFilter{UserID: userID, ProjectID: projectID, ActiveOnly: true})
	if err != nil {
		return nil, err
	}
	ids := []string{}
	for _, sess := range active {
		ids = append(ids, sess.ID)
		if sess.State == sdk.StateRunning || sess.State == sdk.StateStarting {
			if _, err := s.markStopping(ctx, tx, sess.ID, sdk.ReasonRevoked, actor, s.now()); err != nil && !errors.Is(err, store.ErrConflict) {
				return nil, err
			}
		}
	}
	return ids, nil
}

// revokeAccess, after the transaction that cut access committed, closes the
// user's open shells (in the project; every project for 0) at once, then
// ends the sessions cutSessions marked.
func (s *Server) revokeAccess(ctx context.Context, userID, projectID int64, sessions []string, actor string) {
	if n := s.cutShells(userID, projectID); n > 0 {
		s.log.Info("shells cut: access removed", "user_id", userID, "project_id", projectID, "shells", n)
	}
	for _, id := range sessions {
		if err := s.endSession(ctx, id, sdk.ReasonRevoked, actor, s.now()); err != nil {
			s.log.Error("end session of a user who lost access", "session_id", id, "err", err)
		}
	}
}

// hasValidToken reports whether the user holds a token that still works.
func hasValidToken(ctx context.Context, tx store.Store, userID int64, now time.Time) (bool, error) {
	tokens, err := tx.ListTokens(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, t := range tokens {
		if t.RevokedAt.IsZero() && !tokenExpired(t, now) {
			return true, nil
		}
	}
	return false, nil
}

// attachment is an open shell: its public id is random and names it only
// within its session, so that no one can act on another's attachment by
// guessing a number.
type attachment struct {
	n         int64 // the broker's own number (detached, leaving)
	session   string
	userID    int64
	projectID int64
	kind      string             // shellKind.name: "shell" or "terminal"
	cut       context.CancelFunc // closes the tunnel
}

func newAttachmentID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// openAttachment registers attachment n of the session, of the kind named
// (shellKind.name), and returns its public id; cut closes its tunnel.
func (s *Server) openAttachment(n int64, sess store.Session, kind string, cut context.CancelFunc) string {
	id := newAttachmentID()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shells == nil {
		s.shells = map[string]*attachment{}
	}
	s.shells[id] = &attachment{n: n, session: sess.ID, userID: sess.UserID, projectID: sess.ProjectID, kind: kind, cut: cut}
	return id
}

// closeAttachment forgets an attachment once its detach is recorded.
func (s *Server) closeAttachment(id string) {
	s.mu.Lock()
	delete(s.shells, id)
	s.mu.Unlock()
}

// shellKinds returns the kinds ("shell", "terminal") of the session's
// attachments open on this replica, by the store's attachment id; those
// open on other replicas are not in it.
func (s *Server) shellKinds(sessionID string) map[int64]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	kinds := map[int64]string{}
	for _, a := range s.shells {
		if a.session == sessionID {
			kinds[a.n] = a.kind
		}
	}
	return kinds
}

// attachmentIn returns the broker's number of the open attachment id of
// the session; false when the session has no such attachment.
func (s *Server) attachmentIn(sessionID, id string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.shells[id]
	if a == nil || a.session != sessionID {
		return 0, false
	}
	return a.n, true
}

// cutShells closes the user's open tunnels (in the project; every project
// for 0) and returns how many.
func (s *Server) cutShells(userID, projectID int64) int {
	s.mu.Lock()
	var cuts []context.CancelFunc
	for _, a := range s.shells {
		if a.userID == userID && (projectID == 0 || a.projectID == projectID) {
			cuts = append(cuts, a.cut)
		}
	}
	s.mu.Unlock()
	for _, cut := range cuts {
		cut()
	}
	return len(cuts)
}

// checkShellAccess cuts this replica's open shells whose user may no
// longer use them: disabled, removed from the session's project, or whose
// session is no longer running. The replica that records an access change
// cuts its own shells at once (revokeAccess); the others' are cut here,
// within accessCheckInterval.
func (s *Server) checkShellAccess(ctx context.Context) error {
	s.mu.Lock()
	open := make([]*attachment, 0, len(s.shells))
	for _, a := range s.shells {
		open = append(open, a)
	}
	s.mu.Unlock()
	users := map[int64]store.User{}
	sessions := map[string]store.Session{}
	for _, a := range open {
		u, ok := users[a.userID]
		if !ok {
			var err error
			if u, err = s.store.UserByID(ctx, a.userID); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			users[a.userID] = u
		}
		sess, ok := sessions[a.session]
		if !ok {
			var err error
			if sess, err = s.store.Session(ctx, a.session); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			sessions[a.session] = sess
		}
		why := ""
		switch {
		case u.ID == 0 || u.Disabled:
			why = "user disabled"
		case sess.State != sdk.StateRunning:
			why = "session " + sess.State
		default:
			if err := s.mayAttach(ctx, u, sess); err != nil {
				if !isHTTPStatus(err, http.StatusNotFound) {
					return err
				}
				why = "removed from the project"
			}
		}
		if why != "" {
			s.log.Info("shell cut: access removed or session over", "session_id", a.session, "user_id", a.userID, "why", why)
			a.cut()
		}
	}
	return nil
}

// isHTTPStatus reports whether err is an API error with this status.
func isHTTPStatus(err error, status int) bool {
	var he *httpapi.Error
	return errors.As(err, &he) && he.Status == status
}
