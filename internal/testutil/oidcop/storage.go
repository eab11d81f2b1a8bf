package oidcop

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// groupsScope asks for the "groups" claim.
const groupsScope = "groups"

// errDisabled is what the provider answers for a disabled person.
var errDisabled = errors.New("this account is disabled")

// person is one user of the provider.
type person struct {
	user     storage.User
	groups   []string
	disabled bool
}

// people is the provider's user directory; it implements
// storage.UserStore. Groups and the disabled mark are read at token time.
type people struct {
	mu     sync.Mutex
	byID   map[string]*person
	byName map[string]*person
}

var _ storage.UserStore = (*people)(nil)

func newPeople() *people {
	return &people{byID: map[string]*person{}, byName: map[string]*person{}}
}

// add makes a person (a new subject, even when the name was taken: the
// old account under that name is gone) and returns the subject.
func (p *people) add(name, password string, groups []string) string {
	email := name
	if !strings.Contains(name, "@") {
		email = name + "@example.test"
	}
	pn := &person{
		user: storage.User{
			ID:                "sub-" + randomHex(8),
			Username:          name,
			Password:          password,
			FirstName:         name,
			LastName:          "Tester",
			Email:             email,
			EmailVerified:     true,
			PreferredLanguage: language.English,
		},
		groups: slices.Clone(groups),
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.byName[name]; ok {
		delete(p.byID, old.user.ID)
	}
	p.byID[pn.user.ID] = pn
	p.byName[name] = pn
	return pn.user.ID
}

// update runs f on the person called name; false when there is none.
func (p *people) update(name string, f func(*person)) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pn, ok := p.byName[name]
	if ok {
		f(pn)
	}
	return ok
}

// subject is the sub of the person called name ("" when none).
func (p *people) subject(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pn, ok := p.byName[name]; ok {
		return pn.user.ID
	}
	return ""
}

// groupsOf answers the current groups of the subject.
func (p *people) groupsOf(sub string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pn, ok := p.byID[sub]; ok {
		return slices.Clone(pn.groups)
	}
	return nil
}

// disabledName reports whether the person called name is disabled.
func (p *people) disabledName(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pn, ok := p.byName[name]
	return ok && pn.disabled
}

// disabledSub reports whether the subject is disabled or gone.
func (p *people) disabledSub(sub string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pn, ok := p.byID[sub]
	return !ok || pn.disabled
}

// GetUserByID implements storage.UserStore (a copy: the example reads it
// under its own lock while tests may change the person).
func (p *people) GetUserByID(id string) *storage.User {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pn, ok := p.byID[id]; ok {
		u := pn.user
		return &u
	}
	return nil
}

// GetUserByUsername implements storage.UserStore.
func (p *people) GetUserByUsername(name string) *storage.User {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pn, ok := p.byName[name]; ok {
		u := pn.user
		return &u
	}
	return nil
}

// ExampleClientID implements storage.UserStore (the example's JWT
// profile service user, unused here).
func (p *people) ExampleClientID() string { return storage.ServiceUserID }

// opStorage is the example's in-memory storage with this package's
// clients and people: it adds the "groups" claim, refuses disabled people
// at every step (login, code redemption, device approval, refresh) and
// binds device approvals to the person's subject.
type opStorage struct {
	*storage.Storage
	people  *people
	clients map[string]*client

	mu sync.Mutex
	// idTokenLifetime is read by the clients at token time.
	idTokenLifetime time.Duration
	// groupsTokens marks access tokens whose scopes asked for groups,
	// for the userinfo endpoint.
	groupsTokens map[string]bool
}

var _ exampleop.Storage = (*opStorage)(nil)

func newOPStorage(ppl *people, lifetime time.Duration) *opStorage {
	s := &opStorage{
		people:          ppl,
		idTokenLifetime: lifetime,
		groupsTokens:    map[string]bool{},
	}
	s.clients = map[string]*client{
		CLIClientID:   nativeClient(CLIClientID, s),
		OtherClientID: nativeClient(OtherClientID, s),
		WebClientID:   webClient(WebClientID, WebClientSecret, s),
	}
	// The example's storage only checks that a device flow's client is in
	// its map; everything else about clients is answered here.
	known := map[string]*storage.Client{}
	for id := range s.clients {
		known[id] = storage.NativeClient(id)
	}
	s.Storage = storage.NewStorageWithClients(ppl, known)
	return s
}

func (s *opStorage) lifetime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idTokenLifetime
}

func (s *opStorage) setLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idTokenLifetime = d
}

// GetClientByClientID implements op.Storage with this package's clients.
func (s *opStorage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	c, ok := s.clients[id]
	if !ok {
		return nil, fmt.Errorf("client %q not found", id)
	}
	return c, nil
}

// AuthorizeClientIDSecret implements op.Storage: a confidential client's
// secret must match; a public client must not present one (as Entra ID
// answers: a public client sends neither a secret nor an assertion).
func (s *opStorage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	c, ok := s.clients[id]
	switch {
	case !ok:
		return fmt.Errorf("client %q not found", id)
	case c.authMethod == oidc.AuthMethodNone:
		return fmt.Errorf("client %q is public: send its client_id without a secret", id)
	case c.secret != secret:
		return errors.New("invalid client secret")
	}
	return nil
}

// CheckUsernamePassword implements the login form's check.
func (s *opStorage) CheckUsernamePassword(username, password, id string) error {
	if s.people.disabledName(username) {
		return errDisabled
	}
	return s.Storage.CheckUsernamePassword(username, password, id)
}

// CheckUsernamePasswordSimple implements the device form's check.
func (s *opStorage) CheckUsernamePasswordSimple(username, password string) error {
	if s.people.disabledName(username) {
		return errDisabled
	}
	return s.Storage.CheckUsernamePasswordSimple(username, password)
}

// AuthRequestByCode refuses the code of a person disabled since the login.
func (s *opStorage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	req, err := s.Storage.AuthRequestByCode(ctx, code)
	if err != nil {
		return nil, err
	}
	if s.people.disabledSub(req.GetSubject()) {
		return nil, errDisabled
	}
	return req, nil
}

// TokenRequestByRefreshToken refuses the refresh tokens of a disabled
// person: the refresh_token grant answers invalid_grant.
func (s *opStorage) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	req, err := s.Storage.TokenRequestByRefreshToken(ctx, token)
	if err != nil {
		return nil, err
	}
	if s.people.disabledSub(req.GetSubject()) {
		return nil, errDisabled
	}
	return req, nil
}

// CompleteDeviceAuthorization binds an approved device code to the
// person's subject (the example's device page passes the user name).
func (s *opStorage) CompleteDeviceAuthorization(ctx context.Context, userCode, username string) error {
	sub := s.people.subject(username)
	if sub == "" {
		return fmt.Errorf("no user %q", username)
	}
	return s.Storage.CompleteDeviceAuthorization(ctx, userCode, sub)
}

// GetDeviceAuthorizatonState refuses (access_denied) a device code
// approved by a person disabled since.
func (s *opStorage) GetDeviceAuthorizatonState(ctx context.Context, clientID, deviceCode string) (*op.DeviceAuthorizationState, error) {
	st, err := s.Storage.GetDeviceAuthorizatonState(ctx, clientID, deviceCode)
	if err != nil {
		return nil, err
	}
	if st.Done && s.people.disabledSub(st.Subject) {
		return nil, errDisabled
	}
	return st, nil
}

// CreateAccessToken records whether the token's scopes ask for groups.
func (s *opStorage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	id, exp, err := s.Storage.CreateAccessToken(ctx, deviceAsAuthRequest(req))
	if err == nil {
		s.markGroups(id, req.GetScopes())
	}
	return id, exp, err
}

// CreateAccessAndRefreshTokens records whether the token's scopes ask for
// groups.
func (s *opStorage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	id, refresh, exp, err := s.Storage.CreateAccessAndRefreshTokens(ctx, deviceAsAuthRequest(req), current)
	if err == nil {
		s.markGroups(id, req.GetScopes())
	}
	return id, refresh, exp, err
}

// deviceAsAuthRequest gives the example's storage a device flow's
// request as an auth request: it only takes the client of an auth request
// or a refresh, and would store the device flow's tokens (and refresh
// token) for no client, refused at their first refresh.
func deviceAsAuthRequest(req op.TokenRequest) op.TokenRequest {
	st, ok := req.(*op.DeviceAuthorizationState)
	if !ok {
		return req
	}
	return &storage.AuthRequest{
		ApplicationID: st.ClientID,
		UserID:        st.Subject,
		Scopes:        st.Scopes,
		ResponseType:  oidc.ResponseTypeCode,
	}
}

func (s *opStorage) markGroups(tokenID string, scopes []string) {
	if slices.Contains(scopes, groupsScope) {
		s.mu.Lock()
		s.groupsTokens[tokenID] = true
		s.mu.Unlock()
	}
}

// SetUserinfoFromRequest fills an ID token's claims: the example's
// (profile, email) plus "groups", read now, when the scopes ask for it.
func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	if slices.Contains(scopes, groupsScope) {
		s.appendGroups(info, req.GetSubject())
	}
	return nil
}

// SetUserinfoFromToken answers the userinfo endpoint, with "groups" when
// the access token's scopes asked for it.
func (s *opStorage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, origin string) error {
	if err := s.Storage.SetUserinfoFromToken(ctx, info, tokenID, subject, origin); err != nil {
		return err
	}
	s.mu.Lock()
	groups := s.groupsTokens[tokenID]
	s.mu.Unlock()
	if groups {
		s.appendGroups(info, subject)
	}
	return nil
}

func (s *opStorage) appendGroups(info *oidc.UserInfo, sub string) {
	groups := s.people.groupsOf(sub)
	if groups == nil {
		groups = []string{}
	}
	info.AppendClaims("groups", groups)
}

// client is an OAuth client of the provider (the example's Client has
// unexported fields, so it cannot be configured from here).
type client struct {
	id           string
	secret       string
	appType      op.ApplicationType
	authMethod   oidc.AuthMethod
	redirects    []string
	globs        []string
	grantTypes   []oidc.GrantType
	storage      *opStorage
	responseType []oidc.ResponseType
}

var _ op.HasRedirectGlobs = (*client)(nil)

// nativeClient is public: authorization code with PKCE on any loopback
// port (RFC 8252 section 7.3: op ignores the port of a native client's
// registered loopback redirect), refresh tokens, device authorization.
func nativeClient(id string, s *opStorage) *client {
	return &client{
		id:           id,
		appType:      op.ApplicationTypeNative,
		authMethod:   oidc.AuthMethodNone,
		redirects:    []string{"http://127.0.0.1/callback", "http://localhost/callback"},
		grantTypes:   []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken, oidc.GrantTypeDeviceCode},
		responseType: []oidc.ResponseType{oidc.ResponseTypeCode},
		storage:      s,
	}
}

// webClient is confidential (HTTP Basic), with any redirect under
// http://127.0.0.1 or http://localhost on any port.
func webClient(id, secret string, s *opStorage) *client {
	return &client{
		id:           id,
		secret:       secret,
		appType:      op.ApplicationTypeWeb,
		authMethod:   oidc.AuthMethodBasic,
		globs:        []string{"http://127.0.0.1:*/**", "http://localhost:*/**"},
		grantTypes:   []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken},
		responseType: []oidc.ResponseType{oidc.ResponseTypeCode},
		storage:      s,
	}
}

func (c *client) GetID() string                        { return c.id }
func (c *client) RedirectURIs() []string               { return c.redirects }
func (c *client) PostLogoutRedirectURIs() []string     { return nil }
func (c *client) ApplicationType() op.ApplicationType  { return c.appType }
func (c *client) AuthMethod() oidc.AuthMethod          { return c.authMethod }
func (c *client) ResponseTypes() []oidc.ResponseType   { return c.responseType }
func (c *client) GrantTypes() []oidc.GrantType         { return c.grantTypes }
func (c *client) LoginURL(id string) string            { return "/login/username?authRequestID=" + id }
func (c *client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeBearer }
func (c *client) IDTokenLifetime() time.Duration       { return c.storage.lifetime() }
func (c *client) DevMode() bool                        { return false }
func (c *client) IsScopeAllowed(scope string) bool     { return scope == groupsScope }
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c *client) ClockSkew() time.Duration             { return 0 }
func (c *client) RedirectURIGlobs() []string           { return c.globs }
func (c *client) PostLogoutRedirectURIGlobs() []string { return nil }
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
