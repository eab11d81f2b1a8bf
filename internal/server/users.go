package server

import (
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

var userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,63}$`)

func userToSDK(u store.User) sdk.User {
	return sdk.User{Name: u.Name, OrgAdmin: u.OrgAdmin, Disabled: u.Disabled, CreatedAt: u.CreatedAt.UTC()}
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
	if req.Name == WarmPoolUser {
		return httpapi.Errorf(http.StatusBadRequest, "the user name %s is reserved for warm pools; choose another", WarmPoolUser)
	}
	if !userNameRE.MatchString(req.Name) {
		return httpapi.Errorf(http.StatusBadRequest, "user name %q is invalid; use lower-case letters, digits, '_', '.' and '-', starting with a letter", req.Name)
	}
	if err := a.s.checkSingleUser(r.Context()); err != nil {
		return err
	}
	now := a.s.now()
	u := store.User{Name: req.Name, OrgAdmin: req.OrgAdmin, CreatedAt: now}
	var token string
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		if err := tx.CreateUser(r.Context(), &u); err != nil {
			return err
		}
		var err error
		if token, _, err = NewToken(r.Context(), tx, u.ID, "first", now, time.Time{}); err != nil {
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
	err := a.s.store.InTx(r.Context(), func(tx store.Store) error {
		var err error
		if u, err = tx.UserByName(r.Context(), name); errors.Is(err, store.ErrNotFound) {
			return errUserNotFound(name)
		} else if err != nil {
			return err
		}
		if req.Disabled == nil {
			return nil
		}
		if u.ID == caller.ID && *req.Disabled {
			return httpapi.Errorf(http.StatusBadRequest, "you cannot disable yourself; ask another organisation admin")
		}
		before := userToSDK(u)
		u.Disabled = *req.Disabled
		if err := tx.SetUserDisabled(r.Context(), u.ID, u.Disabled); err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, caller.Name, "user.update", "", u.Name, before, userToSDK(u))
	})
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, userToSDK(u))
	return nil
}

func tokenToSDK(t store.Token, user string) sdk.Token {
	return sdk.Token{ID: t.ID, User: user, Name: t.Name, Prefix: t.Prefix, CreatedAt: t.CreatedAt.UTC(),
		ExpiresAt: timePtr(t.ExpiresAt), RevokedAt: timePtr(t.RevokedAt)}
}

// createToken: anyone may mint a token for themselves; organisation admins
// for anyone.
func (a *API) createToken(w http.ResponseWriter, r *http.Request, caller store.User) error {
	var req sdk.TokenCreate
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	if req.ExpiresIn < 0 {
		return httpapi.Errorf(http.StatusBadRequest, "expires_in must not be negative; give 0 for a token that never expires")
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
		secret, t, err := NewToken(r.Context(), tx, owner.ID, req.Name, now, expires)
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
		out = append(out, sdk.Member{User: m.User, Role: m.Role})
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
		m := store.Member{ProjectID: p.ID, UserID: u.ID, Role: req.Role}
		if err := tx.SetMember(r.Context(), m); err != nil {
			return nil, err
		}
		out := sdk.Member{User: u.Name, Role: req.Role}
		return out, a.s.audit(r.Context(), tx, caller.Name, "member.set", p.Name, u.Name, roleOrNil(before), out)
	})
}

func (a *API) removeMember(w http.ResponseWriter, r *http.Request, caller store.User) error {
	return a.changeMember(w, r, caller, func(tx store.Store, p store.Project, u store.User, before string) (any, error) {
		if before == "" {
			return nil, httpapi.Errorf(http.StatusNotFound, "user %s is not a member of project %s", u.Name, p.Name)
		}
		if err := tx.RemoveMember(r.Context(), p.ID, u.ID); err != nil {
			return nil, err
		}
		return nil, a.s.audit(r.Context(), tx, caller.Name, "member.remove", p.Name, u.Name, roleOrNil(before), nil)
	})
}

func roleOrNil(role string) any {
	if role == "" {
		return nil
	}
	return sdk.Member{Role: role}
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
