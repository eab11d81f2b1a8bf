package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"

	"github.com/devgpu/devgpu/internal/authz"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/web"
	"github.com/devgpu/devgpu/sdk"
)

// API holds the HTTP handlers; one file per resource.
type API struct {
	s   *Server
	log *slog.Logger
}

func newAPI(s *Server) *API { return &API{s: s, log: s.log} }

// handlerFunc is a handler that returns its error, written once by wrap.
type handlerFunc func(w http.ResponseWriter, r *http.Request, caller store.User) error

func (a *API) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.healthz) // storehealth.go
	mux.HandleFunc("GET /readyz", a.readyz)   // readyz.go
	// /metrics needs the metrics token when one is configured; without
	// one it shows no project or user names.
	mux.Handle("GET /metrics", a.s.metrics.handler(a.s.cfg.MetricsToken, a.log))
	if a.s.cfg.Link != nil {
		// Agents link here with their session's credential, not a user
		// token (link.go).
		mux.Handle("GET "+link.Path, a.s.cfg.Link)
		// Other replicas relay streams to the agents linked here, with a
		// token derived from the agent key, not a user token (relay.go).
		mux.HandleFunc("GET "+relayPath+"{session}", a.relay)
	}
	// Single sign-on (sso.go): logging in needs no credential.
	mux.Handle("GET /api/v1/auth/config", a.open(a.authConfig))
	// A login is limited per client address (authlimit.go). A renewal and
	// a logout are not: they name a 256-bit refresh secret, so a guess
	// costs one indexed read and calls no provider, and limiting them
	// would let anyone behind the same proxy stop everyone's renewals.
	mux.Handle("POST /api/v1/auth/oidc", a.limited(a.open(a.loginOIDC)))
	mux.Handle("POST /api/v1/auth/refresh", a.open(a.refreshLogin))
	handle := func(pattern string, h handlerFunc) { mux.Handle(pattern, a.authenticated(h)) }
	// Logout takes a credential, or the sign-in's refresh secret when the
	// credential expired (sso.go).
	mux.Handle("POST /api/v1/auth/logout", a.open(a.logoutAny))
	handle("GET /api/v1/whoami", a.whoami)
	handle("GET /api/v1/sessions", a.listSessions)
	handle("POST /api/v1/sessions", a.createSession)
	handle("GET /api/v1/sessions/{id}", a.getSession)
	handle("DELETE /api/v1/sessions/{id}", a.stopSession)
	handle("GET /api/v1/sessions/{id}/connect", a.connectSession)
	handle("GET /api/v1/sessions/{id}/wait", a.waitSession)
	handle("GET /api/v1/sessions/{id}/logs", a.sessionLogs) // logs.go
	handle("GET /api/v1/sessions/{id}/exit", a.sessionExit)
	handle("GET /api/v1/projects", a.listProjects)
	handle("POST /api/v1/projects", a.createProject)
	handle("GET /api/v1/projects/{name}", a.getProject)
	handle("PATCH /api/v1/projects/{name}", a.updateProject)
	handle("DELETE /api/v1/projects/{name}", a.deleteProject)
	handle("GET /api/v1/projects/{name}/members", a.listMembers)
	handle("PUT /api/v1/projects/{name}/members/{user}", a.setMember)
	handle("DELETE /api/v1/projects/{name}/members/{user}", a.removeMember)
	handle("GET /api/v1/org/policy", a.getOrgPolicy)
	handle("PUT /api/v1/org/policy", a.putOrgPolicy)
	handle("GET /api/v1/users", a.listUsers)
	// The web console's cookie makes no API tokens (console.go).
	handle("POST /api/v1/users", a.notByConsoleCookie(errUserFromConsole, a.createUser))
	handle("PATCH /api/v1/users/{name}", a.updateUser)
	handle("GET /api/v1/tokens", a.listTokens)
	handle("POST /api/v1/tokens", a.notByConsoleCookie(errTokenFromConsole, a.createToken))
	handle("DELETE /api/v1/tokens/{id}", a.revokeToken)
	handle("GET /api/v1/audit", a.listAudit)
	handle("GET /api/v1/gpus", a.listGPUs)
	handle("GET /api/v1/usage", a.getUsage)
	handle("GET /api/v1/pools", a.listPools)
	handle("PUT /api/v1/pools", a.setPool)
	handle("GET /api/v1/images", a.listImages)
	handle("POST /api/v1/images", a.addImage)
	handle("DELETE /api/v1/images/{name}", a.removeImage)
	// The web console (console.go, terminal.go, live.go, standing.go;
	// its pages are internal/web's).
	// The console's logins are limited as POST /auth/oidc is; the
	// single sign-on's callback counts once its state checked out.
	mux.Handle("POST /api/v1/console/login", a.limited(a.open(a.consoleLogin)))
	mux.Handle("POST /api/v1/console/logout", a.open(a.consoleLogout))
	handle("GET /api/v1/console/session", a.consoleSession)
	mux.Handle("GET /console/sso/start", a.open(a.consoleSSOStart))
	mux.Handle("GET /console/sso/callback", a.open(a.consoleSSOCallback))
	handle("GET /api/v1/sessions/{id}/terminal", a.terminal)
	handle("GET /api/v1/sessions/live", a.liveSessions)
	handle("GET /api/v1/standing", a.standing)
	// Every method, so that "/api/" below stays the more specific pattern
	// (with "GET /" the two conflict and the mux panics); the console's
	// handler answers 405 to anything but GET and HEAD.
	mux.Handle("/", web.Handler())
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusNotFound, "no API endpoint %s %s; this server speaks /api/v1", r.Method, r.URL.Path))
	})
	return mux
}

// authenticated resolves the caller's credential to a user before h runs:
// the bearer token, or the web console's cookie, whose requests must also
// pass the console's CSRF and origin checks (console.go).
func (a *API) authenticated(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, tok, err := a.authenticate(r)
		if err == nil {
			ctx := withToken(r.Context(), tok)
			if _, cookie, _ := a.s.credential(r); cookie {
				ctx = withConsoleCookie(ctx)
			}
			err = h(w, r.WithContext(ctx), user)
		}
		if err != nil && storeUnreachable(err) && r.Context().Err() == nil {
			err = errDatabaseUnreachable(err)
		}
		if err != nil {
			httpapi.WriteError(w, r, a.log, err)
		}
	})
}

// notByConsoleCookie refuses h to a request the web console's cookie
// authenticated, with refusal: what it answers (an API token) would
// outlive the browser's login and be made by whoever rides it.
func (a *API) notByConsoleCookie(refusal error, h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, caller store.User) error {
		if viaConsoleCookie(r) {
			return refusal
		}
		return h(w, r, caller)
	}
}

var errUnauthenticated = httpapi.Errorf(http.StatusUnauthorized,
	"missing or invalid API token; log in with `devgpu login URL --token TOKEN`")

// credential is the request's token: the Authorization header's when it
// has one (then the console's cookie is not read, so that a request
// cannot mix the two), else the web console's cookie under its name for
// the request's scheme (cookie set). ok is false when there is neither,
// or the header is not a bearer token.
func (s *Server) credential(r *http.Request) (secret string, cookie, ok bool) {
	if _, has := r.Header["Authorization"]; has {
		secret, ok = bearerToken(r.Header.Get("Authorization"))
		return secret, false, ok
	}
	c, err := r.Cookie(s.consoleCookieName(r))
	if err != nil || c.Value == "" {
		return "", false, false
	}
	return c.Value, true, true
}

// authenticate returns the caller, with its token's scope applied, and
// the token. A request the console's cookie authenticates must pass
// checkConsoleRequest (a state change carries the CSRF token, a
// WebSocket comes from the console's own origin): here, so that every
// caller of authenticate has the check.
func (a *API) authenticate(r *http.Request) (store.User, store.Token, error) {
	secret, cookie, ok := a.s.credential(r)
	if !ok {
		return store.User{}, store.Token{}, errUnauthenticated
	}
	use := useBearer
	if cookie {
		use = useCookie
	}
	user, tok, err := a.s.tokenCaller(r.Context(), secret, use)
	if err != nil {
		return store.User{}, store.Token{}, err
	}
	if cookie {
		if err := a.s.checkConsoleRequest(r, tok); err != nil {
			return store.User{}, store.Token{}, err
		}
	}
	return user, tok, nil
}

// credentialUse is where a token came from, for the wording of its
// refusals.
type credentialUse int

const (
	useBearer       credentialUse = iota // Authorization: Bearer (the CLI, the SDK)
	useCookie                            // the web console's cookie
	useConsoleLogin                      // pasted on the web console's login page
)

// tokenCaller resolves a token to its user, with the token's scope
// applied, refusing one that is unknown, revoked or expired, a disabled
// user, and a person's API token where the organisation requires single
// sign-on; the refusal's fix fits where the token came from (use).
func (s *Server) tokenCaller(ctx context.Context, secret string, use credentialUse) (store.User, store.Token, error) {
	hash := sha256.Sum256([]byte(secret))
	tok, user, err := s.store.TokenByHash(ctx, hash[:])
	switch {
	case errors.Is(err, store.ErrNotFound) && use == useCookie:
		return store.User{}, store.Token{}, errConsoleSignedOut
	case errors.Is(err, store.ErrNotFound) && use == useConsoleLogin:
		return store.User{}, store.Token{}, errConsoleBadToken
	case errors.Is(err, store.ErrNotFound):
		return store.User{}, store.Token{}, errUnauthenticated
	case err != nil:
		return store.User{}, store.Token{}, err
	case use == useConsoleLogin && tok.Method == store.TokenMethodSSO:
		return store.User{}, store.Token{}, errConsoleSSOToken
	}
	now := s.now()
	ended := !tok.RevokedAt.IsZero()
	expired := tokenExpired(tok, now)
	switch {
	case use == useCookie && ended:
		return store.User{}, store.Token{}, errConsoleEnded
	case use == useCookie && expired:
		return store.User{}, store.Token{}, errConsoleExpired
	case tok.Method == store.TokenMethodSSO && ended:
		return store.User{}, store.Token{}, httpapi.Errorf(http.StatusUnauthorized, "this single sign-on credential was ended (logged out, renewed or revoked); run `devgpu login URL` again")
	case tok.Method == store.TokenMethodSSO && expired:
		return store.User{}, store.Token{}, httpapi.Errorf(http.StatusUnauthorized, "this single sign-on credential expired; run `devgpu login URL` again")
	case ended:
		return store.User{}, store.Token{}, httpapi.Errorf(http.StatusUnauthorized, "this API token was revoked; ask an administrator for a new one")
	case expired:
		return store.User{}, store.Token{}, httpapi.Errorf(http.StatusUnauthorized, "this API token expired; ask an administrator for a new one")
	case user.Disabled:
		return store.User{}, store.Token{}, httpapi.Errorf(http.StatusUnauthorized, "user %s is disabled; ask an administrator", user.Name)
	}
	if err := s.ssoRefused(user, tok); err != nil {
		if use != useBearer {
			return store.User{}, store.Token{}, errConsoleSSORequired
		}
		return store.User{}, store.Token{}, err
	}
	return scoped(user, tok), tok, nil
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request, caller store.User) error {
	out, err := a.whoamiOf(r, caller)
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// whoamiOf is what GET /api/v1/whoami answers the caller.
func (a *API) whoamiOf(r *http.Request, caller store.User) (sdk.Whoami, error) {
	out := sdk.Whoami{User: caller.Name, OrgAdmin: caller.OrgAdmin,
		Runtime: a.s.runtimeNames(), RuntimeWarnings: a.s.cfg.RuntimeWarnings}
	if err := a.s.whoamiSSO(r.Context(), &out, caller, callerToken(r)); err != nil {
		return sdk.Whoami{}, err
	}
	return out, nil
}

func callerOf(u store.User) authz.Caller {
	return authz.Caller{UserID: u.ID, OrgAdmin: u.OrgAdmin}
}

// projectFor reads a project and the caller's role in it. A project the
// caller may not see is reported as not found.
func (s *Server) projectFor(ctx context.Context, st store.Store, caller store.User, name string) (store.Project, authz.ProjectRole, error) {
	p, err := st.ProjectByName(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.Project{}, "", errProjectNotFound(name)
	}
	if err != nil {
		return store.Project{}, "", err
	}
	role, err := st.MemberRole(ctx, p.ID, caller.ID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Project{}, "", err
	}
	r := authz.ProjectRole(role)
	if authz.ViewProject(callerOf(caller), r) == authz.Hidden {
		return store.Project{}, "", errProjectNotFound(name)
	}
	return p, r, nil
}

func errProjectNotFound(name string) error {
	return httpapi.Errorf(http.StatusNotFound, "project %s not found, or you are not a member; `devgpu admin project list` shows the projects you can use", name)
}

func errSessionNotFound(id string) error {
	return httpapi.Errorf(http.StatusNotFound, "session %s not found; `devgpu sessions list` shows your sessions", id)
}

func errSessionNotRunning(id string) error {
	return httpapi.Errorf(http.StatusConflict, "session %s is no longer running; start a new one with `devgpu shell`", id)
}

// decide turns an authorization decision into the API's error.
func decide(d authz.Decision, forbidden string, notFound error) error {
	switch d {
	case authz.Allowed:
		return nil
	case authz.Forbidden:
		return httpapi.Errorf(http.StatusForbidden, "%s", forbidden)
	default:
		return notFound
	}
}
