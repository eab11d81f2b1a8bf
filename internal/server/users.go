package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

func userToSDK(u store.User) sdk.User {
	return sdk.User{Name: u.Name, OrgAdmin: u.OrgAdmin, Disabled: u.Disabled, ServiceAccount: u.ServiceAccount,
		SSO: u.Subject != "" && u.Subject != store.SubjectPendingBind, SSOBindAllowed: u.Subject == store.SubjectPendingBind,
		CreatedAt: u.CreatedAt.UTC()}
}

// reservedUser says why a user name cannot be taken, or "": the warm
// pools' owner, and the actors of the audit log that are not users (sso,
// system), which must not be confusable with one.
func reservedUser(name string) string {
	switch name {
	case WarmPoolUser:
		return "warm pools"
	case ssoActor:
		return "single sign-on in the audit log"
	case systemActor:
		return "the server itself in the audit log"
	}
	return ""
}

func errUserNotFound(name string) error {
	return httpapi.Errorf(http.StatusNotFound, "user %s not found; `devgpu admin user list` shows the users", name)
}

func (a *API) createUser(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can create users", nil); err != nil {
		return err
	}
	var req sdk.UserCreate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if why := reservedUser(req.Name); why != "" {
		return httpapi.Errorf(http.StatusBadRequest, "the user name %s is reserved for %s; choose another", req.Name, why)
	}
	if err := names.User(req.Name); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	if err := a.s.checkSingleUser(r.Context()); err != nil {
		return err
	}
	now := a.s.now()
	u := store.User{Name: req.Name, OrgAdmin: req.OrgAdmin, CreatedAt: now}
	// The first token is made with the caller's: it is no wider and
	// lives no longer, and revoking the caller's token revokes it.
	parent := tokenParent(callerToken(r))
	expires, scope, err := childToken(parent, time.Time{}, "")
	if err != nil {
		return err
	}
	var token string
	err = a.s.store.InTx(r.Context(), func(tx store.Store) error {
		if err := tx.CreateUser(r.Context(), &u); err != nil {
			return err
		}
		var err error
		first := store.Token{UserID: u.ID, Name: "first", CreatedAt: now, ExpiresAt: expires, ParentID: parent.ID, Scope: scope}
		if token, _, err = mintToken(r.Context(), tx, first); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "user.create", "", u.Name, nil, userToSDK(u))
	})
	if errors.Is(err, store.ErrConflict) {
		return httpapi.Errorf(http.StatusConflict, "user %s already exists; give them a new token with `devgpu admin token create --user %s`", req.Name, req.Name)
	}
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusCreated, sdk.UserCreated{User: userToSDK(u), Token: token})
	return nil
}

func (a *API) listUsers(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can list users", nil); err != nil {
		return err
	}
	users, err := a.s.store.ListUsers(r.Context())
	if err != nil {
		return err
	}
	out := make([]sdk.User, 0, len(users))
	for _, u := range users {
		out = append(out, userToSDK(u))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func (a *API) updateUser(w http.ResponseWriter, r *http.Request, caller store.User) error {
	if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can change users", nil); err != nil {
		return err
	}
	var req sdk.UserUpdate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	name := r.PathValue("name")
	var u store.User
	var cut []string // the sessions of a user disabled now
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		var err error
		if u, err = tx.UserByName(r.Context(), name); errors.Is(err, store.ErrNotFound) {
			return errUserNotFound(name)
		} else if err != nil {
			return err
		}
		if req.Disabled == nil && req.ServiceAccount == nil && req.BindSSO == nil {
			return nil
		}
		if req.Disabled != nil && u.ID == caller.ID && *req.Disabled {
			return httpapi.Errorf(http.StatusBadRequest, "you cannot disable yourself; ask another organisation admin")
		}
		before := userToSDK(u)
		disabling := req.Disabled != nil && u.Disabled != *req.Disabled && *req.Disabled
		if req.Disabled != nil {
			u.Disabled = *req.Disabled
		}
		if req.ServiceAccount != nil {
			u.ServiceAccount = *req.ServiceAccount
		}
		if err := bindSSO(&u, req.BindSSO); err != nil {
			return err
		}
		if u.ServiceAccount && u.Subject != "" {
			return httpapi.Errorf(http.StatusBadRequest,
				"user %s logs in with single sign-on, and a service account cannot log in with single sign-on; make a separate user for the robot", u.Name)
		}
		if err := tx.UpdateUser(r.Context(), u); err != nil {
			return err
		}
		if err := a.s.audit(r.Context(), tx, caller.Name, "user.update", "", u.Name, before, userToSDK(u)); err != nil {
			return err
		}
		if !disabling {
			return nil
		}
		if cut, err = a.s.cutSessions(r.Context(), tx, u.ID, 0, caller.Name); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "access.cut", "", u.Name, nil, map[string]any{"why": "disabled", "sessions": cut})
	})
	if err != nil {
		return err
	}
	if u.Disabled {
		a.s.revokeAccess(r.Context(), u.ID, 0, cut, caller.Name)
	}
	httpapi.Write(w, http.StatusOK, userToSDK(u))
	return nil
}

func tokenToSDK(t store.Token, user string) sdk.Token {
	scope := sdk.TokenScopeFull
	if t.Scope == store.ScopeDeveloper {
		scope = sdk.TokenScopeDeveloper
	}
	return sdk.Token{ID: t.ID, User: user, Name: t.Name, Prefix: t.Prefix, CreatedAt: t.CreatedAt.UTC(),
		ExpiresAt: timePtr(t.ExpiresAt), RevokedAt: timePtr(t.RevokedAt), Scope: scope, ParentID: t.ParentID}
}

// createToken: anyone may mint a token for themselves; organisation admins
// for anyone. The new token is the child of the caller's: it expires no
// later, is no wider, and is revoked with it.
func (a *API) createToken(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req sdk.TokenCreate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if req.ExpiresIn < 0 {
		return httpapi.Errorf(http.StatusBadRequest, "expires_in must not be negative; give 0 for a token that never expires")
	}
	if err := names.Label("token name", req.Name); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	owner := caller
	now := a.s.now()
	var created sdk.TokenCreated
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		if req.User != "" && req.User != caller.Name {
			if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can create tokens for other users", nil); err != nil {
				return err
			}
			var err error
			if owner, err = tx.UserByName(r.Context(), req.User); errors.Is(err, store.ErrNotFound) {
				return errUserNotFound(req.User)
			} else if err != nil {
				return err
			}
		}
		var expires time.Time
		if req.ExpiresIn > 0 {
			expires = now.Add(time.Duration(req.ExpiresIn))
		}
		parent := tokenParent(callerToken(r))
		expires, scope, err := childToken(parent, expires, req.Scope)
		if err != nil {
			return err
		}
		secret, t, err := mintToken(r.Context(), tx, store.Token{UserID: owner.ID, Name: req.Name, CreatedAt: now,
			ExpiresAt: expires, ParentID: parent.ID, Scope: scope})
		if err != nil {
			return err
		}
		created = sdk.TokenCreated{Token: tokenToSDK(t, owner.Name), Secret: secret}
		return a.s.audit(r.Context(), tx, caller.Name, "token.create", "", owner.Name, nil, created.Token)
	})
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusCreated, created)
	return nil
}

// listTokens: your own tokens; organisation admins everyone's (?user=NAME narrows).
func (a *API) listTokens(w http.ResponseWriter, r *http.Request, caller store.User) error {
	userID := caller.ID
	if name := r.URL.Query().Get("user"); name != "" && name != caller.Name {
		if err := decide(authz.OrgAdmin(callerOf(caller)), "only organisation admins can list other users' tokens", nil); err != nil {
			return err
		}
		u, err := a.s.store.UserByName(r.Context(), name)
		if errors.Is(err, store.ErrNotFound) {
			return errUserNotFound(name)
		} else if err != nil {
			return err
		}
		userID = u.ID
	} else if name == "" && caller.OrgAdmin {
		userID = 0
	}
	tokens, err := a.s.store.ListTokens(r.Context(), userID)
	if err != nil {
		return err
	}
	names, err := a.userNames(r)
	if err != nil {
		return err
	}
	out := make([]sdk.Token, 0, len(tokens))
	for _, t := range tokens {
		out = append(out, tokenToSDK(t, names[t.UserID]))
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func (a *API) userNames(r *http.Request) (map[int64]string, error) {
	users, err := a.s.store.ListUsers(r.Context())
	if err != nil {
		return nil, err
	}
	names := map[int64]string{}
	for _, u := range users {
		names[u.ID] = u.Name
	}
	return names, nil
}

// revokeToken: your own tokens, or anyone's for organisation admins; a
// token you may not see is not found.
func (a *API) revokeToken(w http.ResponseWriter, r *http.Request, caller store.User) error {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	notFound := httpapi.Errorf(http.StatusNotFound, "token %s not found; `devgpu admin token list` shows token ids", r.PathValue("id"))
	if err != nil {
		return notFound
	}
	var out sdk.Token
	var cut map[int64][]string // by user: the sessions of those left without a token
	err = a.s.store.InTx(r.Context(), func(tx store.Store) error {
		t, err := tx.TokenByID(r.Context(), id)
		if errors.Is(err, store.ErrNotFound) || (err == nil && t.UserID != caller.ID && !caller.OrgAdmin) {
			return notFound
		} else if err != nil {
			return err
		}
		if err := tx.RevokeToken(r.Context(), id, a.s.now()); err != nil {
			return err
		}
		if cut, err = a.s.cutTokenless(r.Context(), tx, id, caller.Name); err != nil {
			return err
		}
		if t, err = tx.TokenByID(r.Context(), id); err != nil {
			return err
		}
		owner, err := tx.UserByID(r.Context(), t.UserID)
		if err != nil {
			return err
		}
		out = tokenToSDK(t, owner.Name)
		return a.s.audit(r.Context(), tx, caller.Name, "token.revoke", "", owner.Name, nil, out)
	})
	if err != nil {
		return err
	}
	for userID, sessions := range cut {
		a.s.revokeAccess(r.Context(), userID, 0, sessions, caller.Name)
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

func (a *API) listMembers(w http.ResponseWriter, r *http.Request, caller store.User) error {
	p, _, err := a.s.projectFor(r.Context(), a.s.store, caller, r.PathValue("name"))
	if err != nil {
		return err
	}
	members, err := a.s.store.ListMembers(r.Context(), p.ID)
	if err != nil {
		return err
	}
	out := make([]sdk.Member, 0, len(members))
	for _, m := range members {
		out = append(out, sdk.Member{User: m.User, Role: m.Role, Source: m.Source})
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// setMember and removeMember need the project's admin role (or org admin).
func (a *API) setMember(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req struct {
		Role string `json:"role"`
	}
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if req.Role == "" {
		req.Role = store.RoleDeveloper
	}
	if req.Role != store.RoleDeveloper && req.Role != store.RoleAdmin {
		return httpapi.Errorf(http.StatusBadRequest, "role %q is not developer or admin", req.Role)
	}
	return a.changeMember(w, r, caller, func(tx store.Store, p store.Project, u store.User, before string) (any, error) {
		// Set by hand: a group sync never changes it from now on.
		m := store.Member{ProjectID: p.ID, UserID: u.ID, Role: req.Role, Source: ""}
		if err := tx.SetMember(r.Context(), m); err != nil {
			return nil, err
		}
		out := sdk.Member{User: u.Name, Role: req.Role}
		return out, a.s.audit(r.Context(), tx, caller.Name, "member.set", p.Name, u.Name, memberOrNil(u.Name, before), out)
	})
}

// removeMember also cuts the member's open shells in the project and ends
// their sessions there, unless they may still use it as an organisation
// admin.
func (a *API) removeMember(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var removed store.User
	var projectID int64
	var cut []string
	err := a.changeMember(w, r, caller, func(tx store.Store, p store.Project, u store.User, before string) (any, error) {
		if before == "" {
			return nil, httpapi.Errorf(http.StatusNotFound, "user %s is not a member of project %s", u.Name, p.Name)
		}
		if err := tx.RemoveMember(r.Context(), p.ID, u.ID); err != nil {
			return nil, err
		}
		if err := a.s.audit(r.Context(), tx, caller.Name, "member.remove", p.Name, u.Name, memberOrNil(u.Name, before), nil); err != nil {
			return nil, err
		}
		if u.OrgAdmin {
			return nil, nil
		}
		var err error
		removed, projectID = u, p.ID
		if cut, err = a.s.cutSessions(r.Context(), tx, u.ID, p.ID, caller.Name); err != nil {
			return nil, err
		}
		return nil, a.s.audit(r.Context(), tx, caller.Name, "access.cut", p.Name, u.Name, nil, map[string]any{"why": "removed", "sessions": cut})
	})
	if err == nil && projectID != 0 {
		a.s.revokeAccess(r.Context(), removed.ID, projectID, cut, caller.Name)
	}
	return err
}

// cutTokenless, inside the transaction that revoked token id and what it
// created, finds the users who hold no working token any more, marks their
// sessions stopping and audits it; it returns those sessions by user.
func (s *Server) cutTokenless(ctx context.Context, tx store.Store, id int64, actor string) (map[int64][]string, error) {
	all, err := tx.ListTokens(ctx, 0)
	if err != nil {
		return nil, err
	}
	revoked := map[int64]bool{id: true}
	owners := map[int64]bool{}
	for _, t := range all { // by id: a parent comes before its children
		if revoked[t.ID] || revoked[t.ParentID] {
			revoked[t.ID] = true
			owners[t.UserID] = true
		}
	}
	cut := map[int64][]string{}
	for userID := range owners {
		valid, err := hasValidToken(ctx, tx, userID, s.now())
		if err != nil || valid {
			if err != nil {
				return nil, err
			}
			continue
		}
		u, err := tx.UserByID(ctx, userID)
		if err != nil {
			return nil, err
		}
		if cut[userID], err = s.cutSessions(ctx, tx, userID, 0, actor); err != nil {
			return nil, err
		}
		if err := s.audit(ctx, tx, actor, "access.cut", "", u.Name, nil, map[string]any{"why": "last token revoked", "sessions": cut[userID]}); err != nil {
			return nil, err
		}
	}
	return cut, nil
}

// memberOrNil is a membership for the audit log: the whole member, or
// nil when the user is not one.
func memberOrNil(user, role string) any {
	if role == "" {
		return nil
	}
	return sdk.Member{User: user, Role: role}
}

// changeMember runs change for /projects/{name}/members/{user} in one
// transaction after the authorization checks; a nil result answers 204.
func (a *API) changeMember(w http.ResponseWriter, r *http.Request, caller store.User,
	change func(tx store.Store, p store.Project, u store.User, before string) (any, error)) error {
	var out any
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		p, role, err := a.s.projectFor(r.Context(), tx, caller, r.PathValue("name"))
		if err != nil {
			return err
		}
		if err := decide(authz.ManageProject(callerOf(caller), role), "only the project's admins and organisation admins can change its members", errProjectNotFound(p.Name)); err != nil {
			return err
		}
		name := r.PathValue("user")
		u, err := tx.UserByName(r.Context(), name)
		if errors.Is(err, store.ErrNotFound) {
			return errUserNotFound(name)
		} else if err != nil {
			return err
		}
		before, err := tx.MemberRole(r.Context(), p.ID, u.ID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		out, err = change(tx, p, u, before)
		return err
	})
	if err != nil {
		return err
	}
	if out == nil {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// bindSSO applies UserUpdate.BindSSO: true lets the user's next single
// sign-on bind them (store.SubjectPendingBind), false withdraws that.
func bindSSO(u *store.User, bind *bool) error {
	switch {
	case bind == nil:
	case *bind && u.ServiceAccount:
		return httpapi.Errorf(http.StatusBadRequest,
			"user %s is a service account, and a service account cannot log in with single sign-on; make a separate user for the person", u.Name)
	case *bind && u.Subject != "" && u.Subject != store.SubjectPendingBind:
		return httpapi.Errorf(http.StatusConflict,
			"user %s is bound to a single sign-on account already; nothing to allow", u.Name)
	case *bind:
		u.Subject = store.SubjectPendingBind
	case u.Subject == store.SubjectPendingBind:
		u.Subject = ""
	}
	return nil
}
