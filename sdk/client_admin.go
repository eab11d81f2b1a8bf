package sdk

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Administration: users, tokens, project members, the audit log and the
// organisation policy. Projects are in client.go.

// CreateUser creates a user and returns them with their first token, which
// the server shows only this once.
func (c *Client) CreateUser(ctx context.Context, req UserCreate) (UserCreated, error) {
	var u UserCreated
	return u, c.do(ctx, http.MethodPost, "/api/v1/users", req, &u)
}

// Users lists the users.
func (c *Client) Users(ctx context.Context) ([]User, error) {
	var u []User
	return u, c.do(ctx, http.MethodGet, "/api/v1/users", nil, &u)
}

// UpdateUser changes the fields req sets, such as Disabled.
func (c *Client) UpdateUser(ctx context.Context, name string, req UserUpdate) (User, error) {
	var u User
	return u, c.do(ctx, http.MethodPatch, "/api/v1/users/"+url.PathEscape(name), req, &u)
}

// CreateToken mints a token for the caller, or for req.User (org admins).
// Its secret is shown only this once.
func (c *Client) CreateToken(ctx context.Context, req TokenCreate) (TokenCreated, error) {
	var t TokenCreated
	return t, c.do(ctx, http.MethodPost, "/api/v1/tokens", req, &t)
}

// Tokens lists tokens without their secrets: the caller's, or user's when
// user is not empty.
func (c *Client) Tokens(ctx context.Context, user string) ([]Token, error) {
	var t []Token
	path := "/api/v1/tokens"
	if user != "" {
		path += "?" + url.Values{"user": {user}}.Encode()
	}
	return t, c.do(ctx, http.MethodGet, path, nil, &t)
}

// RevokeToken revokes a token and returns it as revoked.
func (c *Client) RevokeToken(ctx context.Context, id int64) (Token, error) {
	var t Token
	return t, c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+strconv.FormatInt(id, 10), nil, &t)
}

// Members lists a project's members with their roles.
func (c *Client) Members(ctx context.Context, project string) ([]Member, error) {
	var m []Member
	return m, c.do(ctx, http.MethodGet, memberPath(project, ""), nil, &m)
}

// SetMember adds user to project with role ("developer" or "admin"), or
// changes the role of a member.
func (c *Client) SetMember(ctx context.Context, project, user, role string) (Member, error) {
	var m Member
	body := struct {
		Role string `json:"role"`
	}{role}
	return m, c.do(ctx, http.MethodPut, memberPath(project, user), body, &m)
}

// RemoveMember removes user from project.
func (c *Client) RemoveMember(ctx context.Context, project, user string) error {
	return c.do(ctx, http.MethodDelete, memberPath(project, user), nil, nil)
}

func memberPath(project, user string) string {
	p := "/api/v1/projects/" + url.PathEscape(project) + "/members"
	if user != "" {
		p += "/" + url.PathEscape(user)
	}
	return p
}

// AuditFilter narrows the audit log; zero fields do not filter.
type AuditFilter struct {
	Project string
	// Actor is who acted, exactly (a user name, or "system").
	Actor string
	// Action is an action exactly ("session.end"), or, ending in "." or
	// "*", every action beginning with it ("session." or "session*").
	Action string
	Since  time.Time // at or after
	Until  time.Time // before
}

// Audit returns the audit log entries that match f.
func (c *Client) Audit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	var e []AuditEvent
	q := url.Values{}
	if f.Project != "" {
		q.Set("project", f.Project)
	}
	if f.Actor != "" {
		q.Set("actor", f.Actor)
	}
	if f.Action != "" {
		q.Set("action", f.Action)
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339))
	}
	if !f.Until.IsZero() {
		q.Set("until", f.Until.UTC().Format(time.RFC3339))
	}
	path := "/api/v1/audit"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return e, c.do(ctx, http.MethodGet, path, nil, &e)
}

// OrgPolicy returns the organisation policy.
func (c *Client) OrgPolicy(ctx context.Context) (OrgPolicy, error) {
	var p OrgPolicy
	return p, c.do(ctx, http.MethodGet, "/api/v1/org/policy", nil, &p)
}

// SetOrgPolicy replaces the organisation policy and returns it as stored.
func (c *Client) SetOrgPolicy(ctx context.Context, p OrgPolicy) (OrgPolicy, error) {
	var out OrgPolicy
	return out, c.do(ctx, http.MethodPut, "/api/v1/org/policy", p, &out)
}
