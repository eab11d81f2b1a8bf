package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Single sign-on (OpenID Connect). The CLI runs the login flow against the
// identity provider itself and hands the provider's tokens to
// POST /api/v1/auth/oidc. The server verifies the ID token, creates the
// user on their first login (just in time), brings the memberships and the
// organisation-admin right that come from the person's groups up to date,
// and answers with its own short-lived token (Config.OIDC.SessionTTL) and a
// refresh secret. POST /api/v1/auth/refresh renews the credential once the
// provider has accepted the person's refresh token again; the leader
// re-checks every login with the provider each RecheckInterval, so that a
// person disabled or removed from a group at the provider loses access
// within minutes, not when the credential expires.
//
// Group sync never touches what an administrator made by hand: a
// membership with Source "" and an organisation admin whose right did not
// come from a group (OrgAdminFromGroups) stay as they are.

// ssoActor is the audit log's actor of changes the group mappings make,
// and systemActor of those the server makes itself; neither can be a
// user's name (reservedUser).
const (
	ssoActor    = "sso"
	systemActor = "system"
)

// unverified is the target in the audit log of a login refused before
// the identity provider's tokens were verified: who it names is unknown.
const unverified = "unknown"

// refreshPrefix starts every devgpu refresh secret, as TokenPrefix starts
// API tokens.
const refreshPrefix = "dgr_"

// End reasons of a login (store.SSOLogin.EndReason).
const (
	endLoggedOut    = "logged out"
	endRevoked      = "the identity provider no longer accepts it"
	endDisabled     = "the user is disabled in devgpu"
	endNoAccess     = "no longer in any group that grants access to devgpu"
	endSubject      = "the identity provider names another account"
	endUnreadable   = "its provider refresh token cannot be opened with this server's agent key"
	endNotRechecked = "could not be re-checked with the identity provider"
	endTokenRevoked = "its credential was revoked"
	// endServiceAccount: a service account never logs in with single
	// sign-on.
	endServiceAccount = "the user is a service account"
	// refusedNoAccess is why a login is refused (audited) whose person is
	// in no group that grants access and has no access made by hand.
	refusedNoAccess = "in none of the groups that grant access to devgpu"
	// refusedUnbound: a user made by hand, not allowed to be bound.
	refusedUnbound = "a user of that name exists and is not bound to a single sign-on account"
)

// recheckMissedIntervals is how many re-check intervals a login may go
// without the provider answering before it is ended.
const recheckMissedIntervals = 3

// ssoLoopInterval is how often the leader looks for logins due for a
// re-check: a fifth of RecheckInterval, at most a minute.
func ssoLoopInterval(recheck time.Duration) time.Duration {
	return min(max(recheck/5, 10*time.Millisecond), time.Minute)
}

// setupSSO configures the identity provider of cfg.OIDC, if any, and
// checks the public URL the web console's sign-in redirects to.
// It refuses to start without a persistent agent key (Config.AgentKey):
// the provider refresh tokens are sealed with it, and a key made for this
// process alone would leave every one unreadable after a restart.
func (s *Server) setupSSO() error {
	s.authLimit = newAuthLimiter(s.now) // the web console's token login has it too
	if u := s.cfg.PublicURL; u != nil {
		// As consoleOrigin compares it: checked, without a default port.
		p, err := ParsePublicURL(u.String())
		if err != nil {
			return err
		}
		s.cfg.PublicURL = p
	}
	if s.cfg.OIDC == nil {
		return nil
	}
	if s.cfg.AgentKey == nil {
		return errors.New("single sign-on needs a persistent agent key (DATA/agent.key or $DEVGPU_AGENT_KEY) to seal the identity provider's refresh tokens; start the server with its data directory, or set DEVGPU_AGENT_KEY")
	}
	p, err := sso.New(*s.cfg.OIDC, s.now)
	if err != nil {
		return err // it names the oidc key at fault
	}
	s.sso = p
	s.warnUnknownProjects()
	return nil
}

// warnUnknownProjects logs, at start, the group mappings that name a
// project devgpu does not have (nobody gets it until it is created).
func (s *Server) warnUnknownProjects() {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for _, m := range s.sso.Config().Projects {
		if seen[m.Project] {
			continue
		}
		seen[m.Project] = true
		if _, err := s.store.ProjectByName(ctx, m.Project); errors.Is(err, store.ErrNotFound) {
			s.log.Warn("an oidc group mapping names a project that does not exist; create it or fix oidc.projects",
				"group", m.Group, "project", m.Project)
		} else if err != nil {
			return // the store is not reachable yet: nothing to tell
		}
	}
}

// refreshSSOPolicy reads whether the organisation requires single sign-on
// for people; each replica does it at every heartbeat (and at once after a
// change through it), so that authenticate need not read the policy for
// every request.
func (s *Server) refreshSSOPolicy(ctx context.Context) {
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		s.log.Warn("read the org policy's single sign-on requirement; kept as it was", "err", err)
		return
	}
	if org.RequireSSO && s.sso == nil && !s.requireSSO.Load() {
		s.log.Warn("the org policy requires single sign-on, but this server has no identity provider configured (oidc in the server config): the requirement is not enforced")
	}
	s.requireSSO.Store(org.RequireSSO)
}

// errSSORequired refuses an API token of a person where the organisation
// requires single sign-on.
var errSSORequired = httpapi.Errorf(http.StatusUnauthorized,
	"this organisation requires single sign-on for people: log in with `devgpu login URL`; API tokens work only for service accounts")

// ssoRefused is the answer to a token that the organisation's single
// sign-on requirement refuses, or nil.
// Without an identity provider configured the requirement cannot be met,
// and is not enforced (New warns).
func (s *Server) ssoRefused(u store.User, t store.Token) error {
	if t.Method == store.TokenMethodAPI && !u.ServiceAccount && s.sso != nil && s.requireSSO.Load() {
		return errSSORequired
	}
	return nil
}

// errNoOIDC answers the single sign-on endpoints of a server without an
// identity provider.
var errNoOIDC = httpapi.Errorf(http.StatusNotFound,
	"this server has no identity provider configured for single sign-on; log in with `devgpu login URL --token TOKEN`, or ask the administrator to configure oidc in the server config")

// open serves an endpoint that needs no credential, writing its error as
// authenticated does.
func (a *API) open(h func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err != nil && storeUnreachable(err) && r.Context().Err() == nil {
			err = errDatabaseUnreachable(err)
		}
		if err != nil {
			httpapi.WriteError(w, r, a.log, err)
		}
	})
}

// authConfig tells a CLI how to log in (no credential needed).
func (a *API) authConfig(w http.ResponseWriter, r *http.Request) error {
	var out sdk.AuthConfig
	if a.s.sso != nil {
		c := a.s.sso.Config()
		out.OIDC = &sdk.OIDCProvider{Issuer: c.Issuer, ClientID: c.ClientID, Scopes: c.Scopes}
		out.SSORequired = a.s.requireSSO.Load()
		out.WebLogin = a.s.cfg.PublicURL != nil
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// ssoError is the API's answer to a failure of the identity provider's
// tokens: 503 while the provider does not answer, 401 otherwise, with the
// sso package's sentence.
func ssoError(err error) error {
	var e *sso.Error
	switch {
	case errors.As(err, &e) && e.Unreachable:
		return &httpapi.Error{Status: http.StatusServiceUnavailable, Msg: e.Msg, Err: err}
	case errors.As(err, &e):
		return &httpapi.Error{Status: http.StatusUnauthorized, Msg: e.Msg, Err: err}
	default:
		return &httpapi.Error{Status: http.StatusUnauthorized, Err: err,
			Msg: "the identity provider's tokens could not be verified; log in again with `devgpu login URL`"}
	}
}

func errNoGroups(c sso.Config) error {
	return httpapi.Errorf(http.StatusForbidden,
		"you are in none of the groups that grant access to devgpu (%s); ask your administrator to add you to one",
		strings.Join(c.GrantingGroups(), ", "))
}

func errUserDisabled(name string) error {
	return httpapi.Errorf(http.StatusForbidden, "user %s is disabled in devgpu; ask an administrator to enable them", name)
}

func errOtherSubject(name string) error {
	return httpapi.Errorf(http.StatusForbidden,
		"user %s is bound to another account of the identity provider; log in with your own account, or ask an administrator", name)
}

func errUnbound(name string) error {
	return httpapi.Errorf(http.StatusForbidden,
		"user %s already exists in devgpu and is not bound to a single sign-on account; an administrator can allow it with `devgpu admin user update %s --bind-sso`", name, name)
}

func errServiceAccountSSO(name string) error {
	return httpapi.Errorf(http.StatusForbidden,
		"user %s is a service account, and a service account cannot log in with single sign-on; log in as the person with your own account, or use the service account's API token", name)
}

// errMissingProjects refuses a first login whose groups grant only
// projects that do not exist, naming them.
func errMissingProjects(ctx context.Context, tx store.Store, c sso.Config, groups []string) error {
	var parts []string
	for _, m := range c.Projects {
		if !slices.Contains(groups, m.Group) {
			continue
		}
		if _, err := tx.ProjectByName(ctx, m.Project); errors.Is(err, store.ErrNotFound) {
			parts = append(parts, fmt.Sprintf("the group %s grants project %s, which does not exist in devgpu", m.Group, m.Project))
		} else if err != nil {
			return err
		}
	}
	if len(parts) == 0 {
		return errNoGroups(c)
	}
	return httpapi.Errorf(http.StatusForbidden, "%s; ask an administrator to create it or fix oidc.projects", strings.Join(parts, ", and "))
}

// problemText is the sentence an API error answers.
func problemText(err error) string {
	var e *httpapi.Error
	if errors.As(err, &e) {
		return e.Msg
	}
	return err.Error()
}

func errLoginEnded(reason string) error {
	return httpapi.Errorf(http.StatusUnauthorized, "your sign-in ended (%s); run `devgpu login URL` again", reason)
}

// errLoginRefreshRefused answers a login whose provider refresh token the
// provider refuses.
const errLoginRefreshRefused = "the identity provider does not accept the refresh token that came with this login; log in again with `devgpu login URL`"

var errUnknownRefresh = httpapi.Errorf(http.StatusUnauthorized,
	"this sign-in is unknown or was renewed already; run `devgpu login URL` again")

// loginOIDC verifies the identity provider's tokens and answers with
// devgpu's own credential.
func (a *API) loginOIDC(w http.ResponseWriter, r *http.Request) error {
	if a.s.sso == nil {
		return errNoOIDC
	}
	var req sdk.OIDCLogin
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	switch {
	case req.Flow != sdk.FlowBrowser && req.Flow != sdk.FlowDevice:
		return httpapi.Errorf(http.StatusBadRequest, "login flow %q is not %s or %s; log in with `devgpu login URL`", req.Flow, sdk.FlowBrowser, sdk.FlowDevice)
	case req.IDToken == "":
		return httpapi.Errorf(http.StatusBadRequest, "the login carries no ID token; log in with `devgpu login URL`")
	case req.Flow == sdk.FlowBrowser && req.Nonce == "":
		return httpapi.Errorf(http.StatusUnauthorized,
			"a browser login must carry the nonce of its authorization request, and this one has none; log in with `devgpu login URL`")
	}
	id, err := a.s.sso.Verify(r.Context(), req.IDToken, req.Nonce)
	if err != nil {
		answer := ssoError(err)
		if sso.IsUnreachable(err) {
			return answer // the provider is down: nothing was refused
		}
		return a.s.loginRefused(r.Context(), sso.Identity{Name: unverified}, req.Flow, problemText(answer), answer)
	}
	if req.RefreshToken == "" {
		return httpapi.Errorf(http.StatusBadRequest,
			"the identity provider returned no refresh token, which devgpu needs to re-check your account; add offline_access to the scopes (oidc.scopes in the server config) and allow refresh tokens for the client")
	}
	if err := errUnusableName(id); err != nil {
		return a.s.loginRefused(r.Context(), id, req.Flow, refusedName, err)
	}
	// The ID token's nonce is inside the token itself, so a stolen ID
	// token alone must not make a login: the refresh token that came with
	// it is redeemed once, and must name the same person. Its answer
	// carries the groups as they are now, and the refresh token to keep
	// (providers rotate them).
	fresh, providerRefresh, err := a.s.sso.Refresh(r.Context(), req.RefreshToken)
	switch {
	case err != nil && sso.IsRevoked(err):
		return a.s.loginRefused(r.Context(), id, req.Flow, "the identity provider refused its refresh token",
			&httpapi.Error{Status: http.StatusUnauthorized, Err: err, Msg: errLoginRefreshRefused})
	case err != nil:
		return ssoError(err) // 503 while the provider does not answer
	case fresh.Subject != id.Subject:
		return a.s.loginRefused(r.Context(), id, req.Flow, "its refresh token belongs to another account", httpapi.Errorf(http.StatusUnauthorized,
			"the refresh token that came with this login belongs to another account than its ID token; log in again with `devgpu login URL`"))
	}
	id.Groups, id.NoGroupsClaim = fresh.Groups, fresh.NoGroupsClaim
	cred, err := a.s.ssoLogin(r.Context(), id, providerRefresh, req.Flow)
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, cred)
	return nil
}

// refusedName is why a login is refused (audited) whose person the
// provider names with a name devgpu cannot take (errUnusableName).
const refusedName = "a user name devgpu cannot take"

// errUnusableName refuses an identity whose name devgpu cannot take as a
// user name (names.User, a reserved name, the pending-binding marker), or
// is nil.
func errUnusableName(id sso.Identity) error {
	if err := names.User(id.Name); err != nil || reservedUser(id.Name) != "" || id.Subject == store.SubjectPendingBind {
		return httpapi.Errorf(http.StatusForbidden,
			"the identity provider names you %q, which devgpu cannot take as a user name; ask the administrator to set oidc.username_claim to another claim (preferred_username, email, upn, sub)", id.Name)
	}
	return nil
}

// projectCut is what a group sync took away in one project: the sessions
// to end once the transaction commits (revokeAccess).
type projectCut struct {
	projectID int64
	sessions  []string
}

// ssoLogin, in one transaction, finds or creates the user, syncs their
// groups, and mints the credential with its login record.
func (s *Server) ssoLogin(ctx context.Context, id sso.Identity, providerRefresh, flow string) (sdk.Credential, error) {
	cfg := s.sso.Config()
	now := s.now()
	granted := cfg.GrantsFor(id.Groups).Any() // the groups let the person in
	if _, err := s.store.UserByName(ctx, id.Name); errors.Is(err, store.ErrNotFound) {
		if !granted {
			return sdk.Credential{}, s.loginRefused(ctx, id, flow, refusedNoAccess, errNoGroups(cfg)) // refused before anything is created
		}
		if err := s.checkSingleUser(ctx); err != nil {
			return sdk.Credential{}, err
		}
	} else if err != nil {
		return sdk.Credential{}, err
	}
	sealed, err := sso.Seal(s.cfg.AgentKey, providerRefresh)
	if err != nil {
		return sdk.Credential{}, err
	}
	var (
		cred    sdk.Credential
		cuts    []projectCut
		refused error  // refused after the sync commits
		why     string // why the login was refused (an end reason)
		user    store.User
	)
	login := func(tx store.Store) error {
		cred, cuts, refused, why = sdk.Credential{}, nil, nil, ""
		created := false
		u, err := tx.UserByName(ctx, id.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if !granted {
				why = refusedNoAccess
				return errNoGroups(cfg)
			}
			u = store.User{Name: id.Name, Subject: id.Subject, CreatedAt: now}
			if err := tx.CreateUser(ctx, &u); err != nil {
				return err
			}
			created = true
			if err := s.audit(ctx, tx, ssoActor, "user.create", "", u.Name, nil, userToSDK(u)); err != nil {
				return err
			}
		case err != nil:
			return err
		case u.Disabled:
			why = endDisabled
			return errUserDisabled(u.Name)
		case u.ServiceAccount:
			why = endServiceAccount
			return errServiceAccountSSO(u.Name)
		case u.Subject == "":
			// A user made by hand (the bootstrap admin, anyone with rights
			// given by hand) is never taken over by whoever the provider
			// names so: an administrator allows it (--bind-sso).
			why = refusedUnbound
			return errUnbound(u.Name)
		case u.Subject == store.SubjectPendingBind && !granted:
			// The binding login must come from someone the groups let in:
			// the pending user's hand-made rights (an organisation admin's,
			// say) must not go to anyone the provider happens to name so.
			why = refusedNoAccess
			return errNoGroups(cfg)
		case u.Subject == store.SubjectPendingBind:
			// Allowed by an administrator: bound to this account from now
			// on.
			before := userToSDK(u)
			u.Subject = id.Subject
			if err := tx.UpdateUser(ctx, u); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, ssoActor, "user.bind", "", u.Name, before,
				map[string]any{"user": userToSDK(u), "subject": id.Subject}); err != nil {
				return err
			}
		case u.Subject != id.Subject:
			why = endSubject
			return errOtherSubject(u.Name)
		}
		user = u
		var access bool
		if cuts, access, err = s.syncGroups(ctx, tx, &user, id.Groups); err != nil {
			return err
		}
		if !access && created {
			// Refused at once: the user is not made at all.
			why = refusedNoAccess
			return errMissingProjects(ctx, tx, cfg, id.Groups)
		}
		if !access {
			refused, why = errNoGroups(cfg), refusedNoAccess
			return nil // the sync's removals stand
		}
		token, t, err := mintToken(ctx, tx, store.Token{UserID: user.ID, Name: "sso", CreatedAt: now,
			ExpiresAt: now.Add(cfg.SessionTTL), Scope: store.ScopeFull, Method: store.TokenMethodSSO})
		if err != nil {
			return err
		}
		secret, hash, err := newRefreshSecret()
		if err != nil {
			return err
		}
		l := store.SSOLogin{UserID: user.ID, TokenID: t.ID, RefreshHash: hash, ProviderRefresh: sealed,
			Groups: id.Groups, Flow: flow, CreatedAt: now, CheckedAt: now}
		if err := tx.CreateSSOLogin(ctx, &l); err != nil {
			return err
		}
		cred = sdk.Credential{User: user.Name, Token: token, ExpiresAt: t.ExpiresAt.UTC(), RefreshToken: secret}
		return s.audit(ctx, tx, user.Name, "auth.login", "", user.Name, nil,
			map[string]any{"method": sdk.AuthSSO, "flow": flow, "groups": groupList(id.Groups)})
	}
	err = s.store.InTx(ctx, login)
	if errors.Is(err, store.ErrConflict) {
		// Two first logins of one person at once: the other created the
		// user; this one finds it.
		err = s.store.InTx(ctx, login)
	}
	if err != nil && why != "" {
		return sdk.Credential{}, s.loginRefused(ctx, id, flow, why, err)
	} else if err != nil {
		return sdk.Credential{}, err
	}
	s.applyCuts(ctx, user.ID, cuts)
	if refused != nil {
		return sdk.Credential{}, s.loginRefused(ctx, id, flow, why, refused)
	}
	return cred, nil
}

// loginRefused audits a login refused after the identity provider's
// tokens were verified ("auth.refused", actor sso: who the tokens name,
// why, with which groups), and returns answer.
func (s *Server) loginRefused(ctx context.Context, id sso.Identity, flow, why string, answer error) error {
	err := s.store.InTx(ctx, func(tx store.Store) error {
		return s.audit(ctx, tx, ssoActor, "auth.refused", "", id.Name, nil,
			map[string]any{"reason": why, "flow": flow, "subject": id.Subject, "groups": groupList(id.Groups)})
	})
	if err != nil {
		s.log.Warn("audit a refused single sign-on", "user", id.Name, "err", err)
	}
	return answer
}

// groupList is never null in the audit log.
func groupList(g []string) []string {
	if g == nil {
		return []string{}
	}
	return g
}

// applyCuts, after the transaction that took the access away committed,
// closes the user's shells and ends their sessions in those projects.
func (s *Server) applyCuts(ctx context.Context, userID int64, cuts []projectCut) {
	for _, c := range cuts {
		s.revokeAccess(ctx, userID, c.projectID, c.sessions, ssoActor)
	}
}

// newRefreshSecret returns a devgpu refresh secret and its SHA-256.
func newRefreshSecret() (string, []byte, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, fmt.Errorf("refresh secret: %w", err)
	}
	secret := refreshPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	hash := sha256.Sum256([]byte(secret))
	return secret, hash[:], nil
}

// syncGroups, inside tx, makes the organisation-admin right and the
// memberships that come from groups what groups grant now, leaving those
// made by hand alone, and audits each change (actor "sso"). It marks the
// sessions of projects the user can no longer use stopping (cutSessions)
// and returns them, and reports whether the user has any access left.
func (s *Server) syncGroups(ctx context.Context, tx store.Store, u *store.User, groups []string) ([]projectCut, bool, error) {
	cfg := s.sso.Config()
	g := cfg.GrantsFor(groups)
	before := userToSDK(*u)
	lostAdmin, removed := false, false
	switch {
	case g.OrgAdmin && !u.OrgAdmin:
		u.OrgAdmin, u.OrgAdminFromGroups = true, true
	case !g.OrgAdmin && u.OrgAdmin && u.OrgAdminFromGroups:
		u.OrgAdmin, u.OrgAdminFromGroups, lostAdmin = false, false, true
	}
	if before.OrgAdmin != u.OrgAdmin {
		if err := tx.UpdateUser(ctx, *u); err != nil {
			return nil, false, err
		}
		if err := s.audit(ctx, tx, ssoActor, "user.update", "", u.Name, before, userToSDK(*u)); err != nil {
			return nil, false, err
		}
	}
	members, err := tx.ListUserMembers(ctx, u.ID)
	if err != nil {
		return nil, false, err
	}
	have := map[string]store.Member{}
	for _, m := range members {
		have[m.Project] = m
	}
	projects := make([]string, 0, len(g.Projects))
	for p := range g.Projects {
		projects = append(projects, p)
	}
	slices.Sort(projects)
	for _, name := range projects {
		role := g.Projects[name]
		m, ok := have[name]
		if ok && (m.Source != store.MemberSourceGroup || m.Role == role) {
			continue // made by hand, or already so
		}
		p, err := tx.ProjectByName(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			s.log.Warn("an oidc group mapping names a project that does not exist; create it or fix the mapping", "project", name)
			continue
		} else if err != nil {
			return nil, false, err
		}
		if err := tx.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: role, Source: store.MemberSourceGroup}); err != nil {
			return nil, false, err
		}
		var was any
		if ok {
			was = sdk.Member{User: u.Name, Role: m.Role, Source: m.Source}
		}
		if err := s.audit(ctx, tx, ssoActor, "member.set", p.Name, u.Name, was,
			sdk.Member{User: u.Name, Role: role, Source: store.MemberSourceGroup}); err != nil {
			return nil, false, err
		}
	}
	var cuts []projectCut
	for _, m := range members {
		if m.Source != store.MemberSourceGroup {
			continue
		}
		if _, ok := g.Projects[m.Project]; ok {
			continue
		}
		if err := tx.RemoveMember(ctx, m.ProjectID, u.ID); err != nil {
			return nil, false, err
		}
		removed = true
		if err := s.audit(ctx, tx, ssoActor, "member.remove", m.Project, u.Name,
			sdk.Member{User: u.Name, Role: m.Role, Source: m.Source}, nil); err != nil {
			return nil, false, err
		}
	}
	// What the user may still use, after the sync.
	after, err := tx.ListUserMembers(ctx, u.ID)
	if err != nil {
		return nil, false, err
	}
	if !u.OrgAdmin && (lostAdmin || removed) {
		// Cut the sessions of every project the user is no member of now:
		// those they left by a group and, when they lost the admin
		// right, those they used as an admin.
		member := map[int64]bool{}
		for _, m := range after {
			member[m.ProjectID] = true
		}
		active, err := tx.ListSessions(ctx, store.SessionFilter{UserID: u.ID, ActiveOnly: true})
		if err != nil {
			return nil, false, err
		}
		done := map[int64]bool{}
		for _, sess := range active {
			if member[sess.ProjectID] || done[sess.ProjectID] {
				continue
			}
			done[sess.ProjectID] = true
			ids, err := s.cutSessions(ctx, tx, u.ID, sess.ProjectID, ssoActor)
			if err != nil {
				return nil, false, err
			}
			project := ""
			if p, err := tx.ProjectByID(ctx, sess.ProjectID); err == nil {
				project = p.Name
			}
			if err := s.audit(ctx, tx, ssoActor, "access.cut", project, u.Name, nil,
				map[string]any{"why": "left the group", "sessions": ids}); err != nil {
				return nil, false, err
			}
			cuts = append(cuts, projectCut{projectID: sess.ProjectID, sessions: ids})
		}
	}
	return cuts, u.OrgAdmin || len(after) > 0, nil
}

// endLogin, inside tx, ends the login: its token is revoked and, when the
// user holds no other working token, their sessions are cut
// (cutTokenless) unless they logged out themselves. It returns the
// sessions to end after the commit, by user.
func (s *Server) endLogin(ctx context.Context, tx store.Store, l store.SSOLogin, reason, actor string) (map[int64][]string, error) {
	if err := s.recordLoginEnd(ctx, tx, l, reason, actor); err != nil {
		return nil, err
	}
	if reason == endLoggedOut {
		return nil, nil
	}
	return s.cutTokenless(ctx, tx, l.TokenID, actor)
}

// recordLoginEnd, inside tx, marks the login ended, revokes its token and
// audits it (auth.end).
func (s *Server) recordLoginEnd(ctx context.Context, tx store.Store, l store.SSOLogin, reason, actor string) error {
	now := s.now()
	l.EndedAt, l.EndReason = now, reason
	if err := tx.UpdateSSOLogin(ctx, l); err != nil {
		return err
	}
	if err := tx.RevokeToken(ctx, l.TokenID, now); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	u, err := tx.UserByID(ctx, l.UserID)
	if err != nil {
		return err
	}
	return s.audit(ctx, tx, actor, "auth.end", "", u.Name, nil, map[string]any{"reason": reason, "flow": l.Flow})
}

// cutAfter is what to end once the transaction that cut access commits:
// sessions in projects a group sync took away, and all sessions by user.
type cutAfter struct {
	projects []projectCut
	users    map[int64][]string
}

// applyAfter closes the shells and ends the sessions a committed
// transaction cut (userID: the user of projects).
func (s *Server) applyAfter(ctx context.Context, userID int64, c cutAfter) {
	s.applyCuts(ctx, userID, c.projects)
	s.revokeCut(ctx, c.users)
}

// providerRefused reports whether a login ending for reason means the
// identity provider no longer lets its person in: it answered, and names
// another account or grants nothing. A refused refresh token (endRevoked)
// is not such evidence: it ends that one login (a password change, an
// expired or reused refresh token, a session revoked at the provider), and
// the person's other logins answer for themselves at their own re-checks.
func providerRefused(reason string) bool {
	return reason == endNoAccess || reason == endSubject
}

// endLoginFor, inside tx, ends a login for reason: as endLogin does, and,
// when the identity provider no longer lets the person in (refused them,
// no granting group left, another account), cuts the person (cutPerson).
func (s *Server) endLoginFor(ctx context.Context, tx store.Store, l store.SSOLogin, reason string) (cutAfter, error) {
	if providerRefused(reason) {
		return s.cutPerson(ctx, tx, l, reason)
	}
	users, err := s.endLogin(ctx, tx, l, reason, ssoActor)
	return cutAfter{users: users}, err
}

// cutPerson, inside tx, ends login l because the identity provider no
// longer lets its person in (reason). The provider is the source of truth
// for people: the memberships and the organisation-admin right that came
// from groups go (a sync with no groups) and, unless the user is a
// service account, every token of theirs (API tokens too) is revoked,
// every other login of theirs ended and all their sessions cut, audited
// as access.cut by sso with why.
func (s *Server) cutPerson(ctx context.Context, tx store.Store, l store.SSOLogin, reason string) (cutAfter, error) {
	if err := s.recordLoginEnd(ctx, tx, l, reason, ssoActor); err != nil {
		return cutAfter{}, err
	}
	u, err := tx.UserByID(ctx, l.UserID)
	if err != nil {
		return cutAfter{}, err
	}
	projects, _, err := s.syncGroups(ctx, tx, &u, nil)
	if err != nil {
		return cutAfter{}, err
	}
	if u.ServiceAccount {
		return cutAfter{projects: projects}, nil
	}
	logins, err := tx.ListSSOLogins(ctx, true)
	if err != nil {
		return cutAfter{}, err
	}
	ended := 0
	for _, o := range logins {
		if o.UserID != u.ID || o.ID == l.ID {
			continue
		}
		if err := s.recordLoginEnd(ctx, tx, o, reason, ssoActor); err != nil {
			return cutAfter{}, err
		}
		ended++
	}
	tokens, err := tx.ListTokens(ctx, u.ID)
	if err != nil {
		return cutAfter{}, err
	}
	revoked := 0
	for _, t := range tokens {
		if !t.RevokedAt.IsZero() {
			continue
		}
		if err := tx.RevokeToken(ctx, t.ID, s.now()); err != nil && !errors.Is(err, store.ErrNotFound) {
			return cutAfter{}, err
		}
		revoked++
	}
	// Every session: those of the projects the sync took away among them.
	sessions, err := s.cutSessions(ctx, tx, u.ID, 0, ssoActor)
	if err != nil {
		return cutAfter{}, err
	}
	if err := s.audit(ctx, tx, ssoActor, "access.cut", "", u.Name, nil, map[string]any{
		"why": reason, "sessions": sessions, "tokens_revoked": revoked, "logins_ended": ended}); err != nil {
		return cutAfter{}, err
	}
	return cutAfter{users: map[int64][]string{u.ID: sessions}}, nil
}

// revokeCut ends, after the commit, the sessions endLogin cut.
func (s *Server) revokeCut(ctx context.Context, cut map[int64][]string) {
	for userID, sessions := range cut {
		s.revokeAccess(ctx, userID, 0, sessions, ssoActor)
	}
}

// loginLocks serialises the renewals and re-checks of one login on this
// replica, so that two of them never redeem the same provider refresh
// token (a provider that rotates them would refuse the second, which
// would read as a revocation).
//
// It also remembers, for the leader, the first refusal of each login's
// stored provider refresh token (confirmRefusal).
type loginLocks struct {
	mu sync.Mutex
	m  map[int64]*sync.Mutex
	// refused is the first refusal the leader's re-check met, by login,
	// of the provider refresh token stored then.
	refused map[int64]refusal
	// confirm is how long after a first refusal a second one of the same
	// stored token ends the login; zero: one loop interval
	// (ssoLoopInterval). Tests lengthen it.
	confirm time.Duration
}

type refusal struct {
	sealed []byte
	at     time.Time
}

// confirmRefusal reports whether the provider's refusal of the login's
// stored refresh token (sealed) at now confirms an earlier one, made at
// least the confirmation delay (or dflt) before; else it remembers this
// one. A renewal on another replica may have redeemed that token a
// moment ago and not yet stored the one the provider answered: its
// commit replaces the stored token, and the next re-check uses that.
func (l *loginLocks) confirmRefusal(id int64, sealed []byte, now time.Time, dflt time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	delay := l.confirm
	if delay == 0 {
		delay = dflt
	}
	if r, ok := l.refused[id]; ok && bytes.Equal(r.sealed, sealed) {
		return now.Sub(r.at) >= delay
	}
	if l.refused == nil {
		l.refused = map[int64]refusal{}
	}
	l.refused[id] = refusal{sealed: sealed, at: now}
	return false
}

// keepRefusals forgets the refusals of logins not in active (ended or
// gone).
func (l *loginLocks) keepRefusals(active map[int64]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.refused {
		if !active[id] {
			delete(l.refused, id)
		}
	}
}

// forgetRefusal drops what confirmRefusal remembered of the login.
func (l *loginLocks) forgetRefusal(id int64) {
	l.mu.Lock()
	delete(l.refused, id)
	l.mu.Unlock()
}

func (l *loginLocks) lock(id int64) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[int64]*sync.Mutex{}
	}
	m := l.m[id]
	if m == nil {
		m = &sync.Mutex{}
		l.m[id] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// recheck redeems the login's provider refresh token. A refusal read
// while another replica renewed the login meanwhile (its stored token
// changed) is tried once more with the new token. It returns the login as
// it was when redeemed.
func (s *Server) recheck(ctx context.Context, l store.SSOLogin) (store.SSOLogin, sso.Identity, string, error) {
	for attempt := 0; ; attempt++ {
		rt, err := sso.Open(s.cfg.AgentKey, l.ProviderRefresh)
		if err != nil {
			return l, sso.Identity{}, "", errUnreadable{err}
		}
		refresh := s.sso.Refresh
		if l.Flow == sdk.FlowWeb {
			refresh = s.sso.RefreshWeb // issued to the web client
		}
		id, next, err := refresh(ctx, rt)
		if err == nil || !sso.IsRevoked(err) || attempt > 0 {
			return l, id, next, err
		}
		cur, rerr := s.store.SSOLoginByRefreshHash(ctx, l.RefreshHash)
		if rerr != nil || bytes.Equal(cur.ProviderRefresh, l.ProviderRefresh) || !cur.EndedAt.IsZero() {
			return l, id, next, err
		}
		l = cur
	}
}

// errUnreadable: the stored provider refresh token does not open with this
// server's agent key (changed since the login).
type errUnreadable struct{ err error }

func (e errUnreadable) Error() string { return "open the provider refresh token: " + e.err.Error() }

// refreshLogin renews a credential after the provider accepted the
// person again.
func (a *API) refreshLogin(w http.ResponseWriter, r *http.Request) error {
	if a.s.sso == nil {
		return errNoOIDC
	}
	var req sdk.RefreshRequest
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(req.RefreshToken))
	cred, err := a.s.renew(r.Context(), sum[:])
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, cred)
	return nil
}

// renew is POST /auth/refresh for the login whose refresh secret hashes to
// hash.
func (s *Server) renew(ctx context.Context, hash []byte) (sdk.Credential, error) {
	l, err := s.store.SSOLoginByRefreshHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return sdk.Credential{}, errUnknownRefresh
	} else if err != nil {
		return sdk.Credential{}, err
	}
	unlock := s.ssoLocks.lock(l.ID)
	defer unlock()
	// Read again under the lock: a renewal that held it may have rotated
	// the secret meanwhile.
	if l, err = s.store.SSOLoginByRefreshHash(ctx, hash); errors.Is(err, store.ErrNotFound) {
		return sdk.Credential{}, errUnknownRefresh
	} else if err != nil {
		return sdk.Credential{}, err
	}
	if !l.EndedAt.IsZero() {
		return sdk.Credential{}, errLoginEnded(l.EndReason)
	}
	if t, err := s.store.TokenByID(ctx, l.TokenID); err == nil && !t.RevokedAt.IsZero() {
		// Revoked by hand (`devgpu admin token revoke`): a renewal must
		// not bring it back.
		return sdk.Credential{}, s.endRevokedLogin(ctx, l)
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return sdk.Credential{}, err
	}
	l, id, next, err := s.recheck(ctx, l)
	if err != nil && sso.IsRevoked(err) && s.leaderMayRecheck(ctx, l) {
		// The leader, on another replica, may have redeemed the same
		// token this moment: it stores the provider's new one, or
		// confirms the refusal and ends the login.
		return sdk.Credential{}, &httpapi.Error{Status: http.StatusServiceUnavailable, Err: err, Msg: errRenewRaced}
	}
	if err != nil {
		answer, _ := s.recheckFailed(ctx, l, err, true)
		return sdk.Credential{}, answer
	}
	if l, err = s.keepProviderRefresh(ctx, l, next); err != nil {
		return sdk.Credential{}, err
	}
	cfg := s.sso.Config()
	now := s.now()
	var (
		cred sdk.Credential
		res  resynced
	)
	err = s.store.InTx(ctx, func(tx store.Store) error {
		cred, res = sdk.Credential{}, resynced{}
		cur, ok, err := s.currentLogin(ctx, tx, l)
		if err != nil {
			return err
		}
		if !ok {
			return loginGone(cur)
		}
		if res, err = s.resync(ctx, tx, cur, id); err != nil || res.refused != nil {
			return err
		}
		// The new token first, then the old one revoked: the user is never
		// without a working token, so nothing is cut.
		token, t, err := mintToken(ctx, tx, store.Token{UserID: res.user.ID, Name: "sso", CreatedAt: now,
			ExpiresAt: now.Add(cfg.SessionTTL), Scope: store.ScopeFull, Method: store.TokenMethodSSO})
		if err != nil {
			return err
		}
		if err := tx.RevokeToken(ctx, cur.TokenID, now); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		secret, newHash, err := newRefreshSecret()
		if err != nil {
			return err
		}
		cur.TokenID, cur.RefreshHash, cur.Groups, cur.CheckedAt = t.ID, newHash, id.Groups, now
		if err := tx.UpdateSSOLogin(ctx, cur); err != nil {
			return err
		}
		cred = sdk.Credential{User: res.user.Name, Token: token, ExpiresAt: t.ExpiresAt.UTC(), RefreshToken: secret}
		return nil
	})
	if err != nil {
		return sdk.Credential{}, err
	}
	s.applyAfter(ctx, l.UserID, res.after)
	if res.refused != nil {
		return sdk.Credential{}, res.refused
	}
	return cred, nil
}

// loginGone answers a renewal whose login, re-read in its transaction
// (currentLogin), was renewed, ended or re-checked meanwhile.
func loginGone(cur store.SSOLogin) error {
	switch {
	case cur.ID == 0:
		return errUnknownRefresh
	case !cur.EndedAt.IsZero():
		return errLoginEnded(cur.EndReason)
	default:
		// Another replica redeemed the provider refresh token meanwhile.
		return httpapi.Errorf(http.StatusServiceUnavailable, "%s", errRenewRaced)
	}
}

// currentLogin, inside tx and under the leader's fence when ctx carries
// it, re-reads l by its refresh secret's hash. ok is false when the login
// was renewed (its secret rotated: cur is zero), ended, or its provider
// refresh token is no longer the one l holds (another replica redeemed
// it): what that did stands.
func (s *Server) currentLogin(ctx context.Context, tx store.Store, l store.SSOLogin) (cur store.SSOLogin, ok bool, err error) {
	if err := s.checkFence(ctx, tx); err != nil {
		return store.SSOLogin{}, false, err
	}
	cur, err = tx.SSOLoginByRefreshHash(ctx, l.RefreshHash)
	if errors.Is(err, store.ErrNotFound) {
		return store.SSOLogin{}, false, nil
	} else if err != nil {
		return store.SSOLogin{}, false, err
	}
	return cur, cur.EndedAt.IsZero() && bytes.Equal(cur.ProviderRefresh, l.ProviderRefresh), nil
}

// keepProviderRefresh stores, at once and in a transaction of its own, the
// provider refresh token that redeeming l's answered, if l's is still the
// one stored; it returns l with it. Providers rotate refresh tokens: the
// one l held is spent now, and the transaction that follows (the group
// sync) may fail (a database blip, a lost lease), which must not lose the
// new one, or the next re-check would read the spent one's refusal as a
// revocation. It is not fenced: the token is the provider's truth
// whichever replica leads.
func (s *Server) keepProviderRefresh(ctx context.Context, l store.SSOLogin, next string) (store.SSOLogin, error) {
	sealed, err := sso.Seal(s.cfg.AgentKey, next)
	if err != nil {
		return l, err
	}
	ctx = context.WithoutCancel(ctx) // a client gone must not drop it
	kept := false
	err = s.store.InTx(ctx, func(tx store.Store) error {
		kept = false
		cur, err := tx.SSOLoginByRefreshHash(ctx, l.RefreshHash)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !cur.EndedAt.IsZero() || !bytes.Equal(cur.ProviderRefresh, l.ProviderRefresh) {
			return nil
		}
		cur.ProviderRefresh = sealed
		if err := tx.UpdateSSOLogin(ctx, cur); err != nil {
			return err
		}
		kept = true
		return nil
	})
	if err != nil {
		return l, err
	}
	if kept {
		l.ProviderRefresh = sealed
	}
	return l, nil
}

// resynced is what resync did.
type resynced struct {
	user    store.User
	after   cutAfter
	refused error // the login was ended: the answer to a renewal
}

// resync, inside tx, brings the login's user up to date with what the
// provider answered of them (id): a user disabled in devgpu, a service
// account or another account than theirs ends the login, and so does no
// access left after the group sync (endLoginFor).
func (s *Server) resync(ctx context.Context, tx store.Store, cur store.SSOLogin, id sso.Identity) (resynced, error) {
	u, err := tx.UserByID(ctx, cur.UserID)
	if err != nil {
		return resynced{}, err
	}
	res := resynced{user: u}
	if reason, rerr := s.refuseLogin(u, id); rerr != nil {
		res.refused = rerr
		res.after, err = s.endLoginFor(ctx, tx, cur, reason)
		return res, err
	}
	var access bool
	if res.after.projects, access, err = s.syncGroups(ctx, tx, &res.user, id.Groups); err != nil {
		return res, err
	}
	if !access {
		res.refused = errNoGroups(s.sso.Config())
		after, err := s.endLoginFor(ctx, tx, cur, endNoAccess)
		if after.users != nil {
			res.after = after // every session of the user: the sync's among them
		} else {
			res.after.projects = append(res.after.projects, after.projects...)
		}
		return res, err
	}
	return res, nil
}

// endRevokedLogin ends a login whose credential was revoked by hand (a
// renewal writes the new token and revokes the old one in one
// transaction, so the stored token of a going login is revoked only so),
// and answers the renewal that found it.
func (s *Server) endRevokedLogin(ctx context.Context, l store.SSOLogin) error {
	var cut map[int64][]string
	err := s.store.InTx(ctx, func(tx store.Store) error {
		cut = nil
		cur, err := tx.SSOLoginByRefreshHash(ctx, l.RefreshHash)
		if errors.Is(err, store.ErrNotFound) {
			return errUnknownRefresh
		} else if err != nil {
			return err
		}
		if !cur.EndedAt.IsZero() {
			return errLoginEnded(cur.EndReason)
		}
		cut, err = s.endLogin(ctx, tx, cur, endTokenRevoked, ssoActor)
		return err
	})
	if err != nil {
		return err
	}
	s.revokeCut(ctx, cut)
	return errLoginEnded(endTokenRevoked)
}

// errRenewRaced answers a renewal that the provider refused while the
// leader may have been re-checking the login.
const errRenewRaced = "the identity provider refused to renew this sign-in while devgpu was re-checking it; try again in a minute, and run `devgpu login URL` if it is refused again"

// leaderMayRecheck reports whether the leader, on another replica, may be
// redeeming the login's provider refresh token right now: this replica
// does not lead (on the leader, loginLocks serialise the two), and the
// login is due for a re-check and still grants something
// (recheckLogins).
func (s *Server) leaderMayRecheck(ctx context.Context, l store.SSOLogin) bool {
	if _, leading := s.leading(); leading {
		return false
	}
	if s.now().Sub(l.CheckedAt) < s.sso.Config().RecheckInterval {
		return false
	}
	grants, err := s.loginGrants(ctx, l)
	return err == nil && grants
}

// refuseLogin says why a re-checked login must end, if it must: the user
// disabled in devgpu, or the provider naming another account.
func (s *Server) refuseLogin(u store.User, id sso.Identity) (string, error) {
	switch {
	case u.Disabled:
		return endDisabled, errUserDisabled(u.Name)
	case u.ServiceAccount:
		return endServiceAccount, errServiceAccountSSO(u.Name)
	case u.Subject != "" && id.Subject != u.Subject:
		return endSubject, errOtherSubject(u.Name)
	}
	return "", nil
}

// recheckFailed handles a provider that refused or did not answer a
// re-check of l: a refusal (or a refresh token that cannot be opened) ends
// the login; a provider out of reach ends it only once it has gone
// unchecked for recheckMissedIntervals (the leader's re-check; a renewal
// just answers 503 and leaves the credential as it is). It returns the
// API's answer, and a failure to record the end.
func (s *Server) recheckFailed(ctx context.Context, l store.SSOLogin, err error, renewal bool) (answer, failed error) {
	reason, answer := "", ssoError(err)
	var unreadable errUnreadable
	switch {
	case errors.As(err, &unreadable):
		reason = endUnreadable
		answer = errLoginEnded(reason)
	case sso.IsRevoked(err):
		reason = endRevoked
	case !renewal && s.now().Sub(l.CheckedAt) > recheckMissedIntervals*s.sso.Config().RecheckInterval:
		reason = endNotRechecked
	default:
		return answer, nil
	}
	var after cutAfter
	ended := false
	failed = s.store.InTx(ctx, func(tx store.Store) error {
		after, ended = cutAfter{}, false
		cur, ok, err := s.currentLogin(ctx, tx, l)
		if err != nil || !ok {
			return err // renewed or re-checked meanwhile: that check stands
		}
		ended = true
		after, err = s.endLoginFor(ctx, tx, cur, reason)
		return err
	})
	if failed != nil {
		return failed, failed
	}
	if ended {
		s.log.Info("single sign-on ended", "login", l.ID, "user_id", l.UserID, "reason", reason)
		s.applyAfter(ctx, l.UserID, after)
	}
	return answer, nil
}

// recheckLogins, on the leader, re-checks with the provider every active
// login not checked for RecheckInterval: the person's account (a refusal
// ends the login and cuts their sessions) and their groups (memberships
// synced, sessions of projects they left cut).
func (s *Server) recheckLogins(ctx context.Context) error {
	logins, err := s.store.ListSSOLogins(ctx, true)
	if err != nil {
		return err
	}
	interval := s.sso.Config().RecheckInterval
	active := map[int64]bool{}
	for _, l := range logins {
		active[l.ID] = true
	}
	s.ssoLocks.keepRefusals(active)
	for _, l := range logins {
		if ctx.Err() != nil {
			return nil
		}
		if s.now().Sub(l.CheckedAt) < interval {
			continue
		}
		grants, err := s.loginGrants(ctx, l)
		if err != nil {
			return err
		}
		if !grants {
			continue
		}
		if err := s.recheckLogin(ctx, l); err != nil {
			if errors.Is(err, store.ErrFenced) {
				return err
			}
			s.log.Warn("re-check a single sign-on with the identity provider", "login", l.ID, "user_id", l.UserID, "err", err)
		}
	}
	return nil
}

// loginGrants reports whether the login still grants something: its
// token works (not expired, not revoked), or its user has a session that
// is not over. Only those are re-checked by the leader: redeeming the
// provider refresh token of a credential that expired long ago, every
// interval, would keep it alive at the provider for ever. A renewal
// (POST /auth/refresh) re-checks the provider itself, so a credential
// that comes back is checked then.
func (s *Server) loginGrants(ctx context.Context, l store.SSOLogin) (bool, error) {
	t, err := s.store.TokenByID(ctx, l.TokenID)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return false, err
	case t.RevokedAt.IsZero() && (t.ExpiresAt.IsZero() || s.now().Before(t.ExpiresAt)):
		return true, nil
	}
	active, err := s.store.ListSessions(ctx, store.SessionFilter{UserID: l.UserID, ActiveOnly: true})
	if err != nil {
		return false, err
	}
	return len(active) > 0, nil
}

// recheckLogin re-checks one login (recheckLogins).
func (s *Server) recheckLogin(ctx context.Context, l store.SSOLogin) error {
	unlock := s.ssoLocks.lock(l.ID)
	defer unlock()
	cur, err := s.store.SSOLoginByRefreshHash(ctx, l.RefreshHash)
	if errors.Is(err, store.ErrNotFound) {
		return nil // renewed meanwhile
	} else if err != nil {
		return err
	}
	if !cur.EndedAt.IsZero() || s.now().Sub(cur.CheckedAt) < s.sso.Config().RecheckInterval {
		return nil
	}
	l, id, next, err := s.recheck(ctx, cur)
	if err != nil && sso.IsRevoked(err) &&
		!s.ssoLocks.confirmRefusal(l.ID, l.ProviderRefresh, s.now(), ssoLoopInterval(s.sso.Config().RecheckInterval)) {
		// A first refusal may be another replica's renewal redeeming the
		// same token this moment: ended only if the next pass is refused
		// too.
		s.log.Info("the identity provider refused a single sign-on's refresh token; the next re-check confirms it", "login", l.ID, "user_id", l.UserID)
		return nil
	}
	s.ssoLocks.forgetRefusal(l.ID)
	if err != nil {
		_, failed := s.recheckFailed(ctx, l, err, false)
		if failed != nil {
			return failed
		}
		if sso.IsUnreachable(err) {
			return err // not ended yet: logged
		}
		return nil
	}
	if l, err = s.keepProviderRefresh(ctx, l, next); err != nil {
		return err
	}
	var res resynced
	err = s.store.InTx(ctx, func(tx store.Store) error {
		res = resynced{}
		cur, ok, err := s.currentLogin(ctx, tx, l)
		if err != nil || !ok {
			return err // renewed meanwhile: that renewal's sync stands
		}
		if res, err = s.resync(ctx, tx, cur, id); err != nil || res.refused != nil {
			return err
		}
		cur.Groups, cur.CheckedAt = id.Groups, s.now()
		return tx.UpdateSSOLogin(ctx, cur)
	})
	if err != nil {
		return err
	}
	s.applyAfter(ctx, l.UserID, res.after)
	return nil
}

// logoutAny is POST /auth/logout: it ends the caller's single sign-on or,
// without a working credential (a CLI whose credential expired), the one
// whose devgpu refresh secret the body carries ({"refresh_token": ...}).
func (a *API) logoutAny(w http.ResponseWriter, r *http.Request) error {
	var req sdk.RefreshRequest
	if r.ContentLength != 0 {
		if err := httpapi.Read(w, r, &req); err != nil {
			return err
		}
	}
	caller, tok, err := a.authenticate(r)
	if err == nil {
		return a.logout(w, r.WithContext(withToken(r.Context(), tok)), caller)
	}
	if req.RefreshToken == "" || storeUnreachable(err) {
		return err
	}
	sum := sha256.Sum256([]byte(req.RefreshToken))
	err = a.s.store.InTx(r.Context(), func(tx store.Store) error {
		l, err := tx.SSOLoginByRefreshHash(r.Context(), sum[:])
		if errors.Is(err, store.ErrNotFound) {
			return errUnknownRefresh
		} else if err != nil {
			return err
		}
		if !l.EndedAt.IsZero() {
			return nil
		}
		u, err := tx.UserByID(r.Context(), l.UserID)
		if err != nil {
			return err
		}
		_, err = a.s.endLogin(r.Context(), tx, l, endLoggedOut, u.Name)
		return err
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// logout ends the caller's single sign-on; an API token is left as it is.
func (a *API) logout(w http.ResponseWriter, r *http.Request, caller store.User) error {
	tok := callerToken(r)
	if tok.Method != store.TokenMethodSSO {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if err := a.s.logOutSSO(r.Context(), tok, caller.Name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// logOutSSO ends the single sign-on whose credential is tok, as its user
// (actor) logging out.
func (s *Server) logOutSSO(ctx context.Context, tok store.Token, actor string) error {
	return s.store.InTx(ctx, func(tx store.Store) error {
		l, err := tx.SSOLoginByToken(ctx, tok.ID)
		if errors.Is(err, store.ErrNotFound) {
			// No login record (it cannot happen but by hand): the token
			// alone is ended.
			return tx.RevokeToken(ctx, tok.ID, s.now())
		} else if err != nil {
			return err
		}
		if !l.EndedAt.IsZero() {
			return nil
		}
		_, err = s.endLogin(ctx, tx, l, endLoggedOut, actor)
		return err
	})
}

// tokenParent is the token a new token is made the child of: the caller's,
// but not a single sign-on credential, which is replaced at each renewal
// (revoking it would revoke its children) and expires within hours. A
// token made with one has no parent; its scope is still capped.
func tokenParent(t store.Token) store.Token {
	if t.Method == store.TokenMethodSSO {
		return store.Token{Scope: t.Scope}
	}
	return t
}

// whoamiSSO fills what whoami says about the caller's credential and
// memberships.
func (s *Server) whoamiSSO(ctx context.Context, w *sdk.Whoami, caller store.User, tok store.Token) error {
	w.Auth = sdk.AuthToken
	w.ServiceAccount = caller.ServiceAccount
	w.ExpiresAt = timePtr(tok.ExpiresAt)
	if tok.Method == store.TokenMethodSSO {
		w.Auth = sdk.AuthSSO
		l, err := s.store.SSOLoginByToken(ctx, tok.ID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		w.Groups = l.Groups
	}
	members, err := s.store.ListUserMembers(ctx, caller.ID)
	if err != nil {
		return err
	}
	for _, m := range members {
		w.Projects = append(w.Projects, sdk.WhoamiProject{Name: m.Project, Role: m.Role, Source: m.Source})
	}
	return nil
}
