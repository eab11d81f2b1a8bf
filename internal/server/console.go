package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// The web console's sign-in (its pages are internal/web's). The browser
// holds a devgpu token in an httpOnly cookie (sdk.ConsoleCookie), which
// authenticates like a bearer token (authenticate):
//
//   - POST /api/v1/console/login takes an API token and mints a child of
//     it for the browser ("web console": same scope, expires with it and
//     within consoleTokenTTL, revoked with it);
//   - GET /console/sso/start and /console/sso/callback run the
//     authorization code flow with PKCE against the identity provider,
//     server side, and log the person in as POST /api/v1/auth/oidc does
//     (ssoLogin, flow sdk.FlowWeb); the cookie holds that login's
//     credential and expires with it;
//   - POST /api/v1/console/logout revokes the cookie's token.
//
// A request the cookie authenticates is held to checkConsoleRequest: a
// state change (any method but GET and HEAD) carries the login's CSRF
// token (csrfToken: stateless, the same on every replica) and, when the
// browser names its Origin, comes from the server's own; a WebSocket
// comes from the server's own origin. The server's origin is the
// request's scheme (https when it came over TLS) and Host: behind a
// reverse proxy, keep the Host header and terminate TLS at devgpu, or
// the console's state changes are refused.

const (
	// consoleTokenTTL is the longest a token login of the console lasts.
	consoleTokenTTL = 12 * time.Hour
	// consoleTokenName names the tokens minted for the browser.
	consoleTokenName = "web console"

	// ssoCallbackPath is the web sign-in's redirect URI, under the
	// server's own origin: register it with the identity provider.
	ssoCallbackPath = "/console/sso/callback"
	// ssoStateCookie keeps a web sign-in's state, nonce and PKCE verifier
	// (sealed) between its start and its callback, under ssoStatePath.
	ssoStateCookie = "devgpu_sso"
	ssoStatePath   = "/console/sso"
	// ssoStateTTL is how long a web sign-in may take at the provider.
	ssoStateTTL = 10 * time.Minute

	// Labels of the keys derived from the agent key (consoleKey): one per
	// use, so that neither can stand for the other nor for the agent
	// secrets.
	csrfLabel     = "devgpu console csrf v1"
	ssoStateLabel = "devgpu console sso state v1"
)

// errConsolePending answers the console's endpoints still to be built.
var errConsolePending = httpapi.Errorf(http.StatusNotImplemented, "the web console is not built yet")

var (
	errConsoleSignedOut = httpapi.Errorf(http.StatusUnauthorized,
		"your web console sign-in is not valid on this server; sign in again")
	errConsoleEnded = httpapi.Errorf(http.StatusUnauthorized,
		"your web console sign-in was ended (logged out, or the token or single sign-on it came from was revoked); sign in again")
	errConsoleExpired = httpapi.Errorf(http.StatusUnauthorized,
		"your web console sign-in expired; sign in again")
	errConsoleSSORequired = httpapi.Errorf(http.StatusUnauthorized,
		"this organisation requires single sign-on for people: sign in with single sign-on; API tokens work only for service accounts")
	errConsoleBadToken = httpapi.Errorf(http.StatusUnauthorized,
		"this is not a valid devgpu API token; paste the whole token (it starts with "+TokenPrefix+"), or make one with `devgpu admin token create`")
	errConsoleSSOToken = httpapi.Errorf(http.StatusUnauthorized,
		"this is the credential of a single sign-on, not an API token; sign in to the web console with single sign-on instead")
	errConsoleNoToken = httpapi.Errorf(http.StatusBadRequest,
		"the login carries no token; paste an API token (it starts with "+TokenPrefix+"), made with `devgpu admin token create`")
	errConsoleCSRF = httpapi.Errorf(http.StatusForbidden,
		"this request came from the web console without its CSRF token; reload the page and try again")
	errNoWebSSO = httpapi.Errorf(http.StatusNotFound,
		"this server has no identity provider configured for single sign-on; sign in to the web console with an API token, or ask the administrator to configure oidc in the server config")
)

func errForeignOrigin(r *http.Request) error {
	return httpapi.Errorf(http.StatusForbidden,
		"this request came from the page of another site (%q), not from this server's web console; open the console at %s", r.Header.Get("Origin"), consoleOrigin(r))
}

func errForeignWebSocket(r *http.Request) error {
	from := r.Header.Get("Origin")
	if from == "" {
		from = "no page"
	}
	return httpapi.Errorf(http.StatusForbidden,
		"a WebSocket signed in with the web console's cookie opens only from the console's own pages, and this one came from %q; open it from the console at %s", from, consoleOrigin(r))
}

// consoleCookieKey marks a request authenticated by the console's cookie.
type consoleCookieKey struct{}

func withConsoleCookie(ctx context.Context) context.Context {
	return context.WithValue(ctx, consoleCookieKey{}, true)
}

// viaConsoleCookie reports whether the web console's cookie, not a bearer
// token, authenticated the request.
func viaConsoleCookie(r *http.Request) bool {
	v, _ := r.Context().Value(consoleCookieKey{}).(bool)
	return v
}

// consoleOrigin is the server's own origin as the request reached it:
// its scheme (https over TLS) and Host.
func consoleOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// fromConsoleOrigin reports whether the request's Origin is the server's
// own ("null", another scheme, host or port is not).
func fromConsoleOrigin(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Origin"), consoleOrigin(r))
}

// checkConsoleRequest holds a request that the console's cookie
// authenticated with tok to what only the console's own pages can do: an
// upgrade (a WebSocket) comes from the server's own origin; a state
// change (any method but GET and HEAD) carries tok's CSRF token and, when
// the browser names an Origin, comes from the server's own.
func (s *Server) checkConsoleRequest(r *http.Request, tok store.Token) error {
	if r.Header.Get("Upgrade") != "" {
		if !fromConsoleOrigin(r) {
			return errForeignWebSocket(r)
		}
		return nil
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	if r.Header.Get("Origin") != "" && !fromConsoleOrigin(r) {
		return errForeignOrigin(r)
	}
	want := s.csrfToken(tok)
	if want == "" || !hmac.Equal([]byte(r.Header.Get(sdk.CSRFHeader)), []byte(want)) {
		return errConsoleCSRF
	}
	return nil
}

// consoleKey derives the key of one use (label) from the agent key, which
// every replica shares.
func (s *Server) consoleKey(label string) []byte {
	m := hmac.New(sha256.New, s.cfg.AgentKey)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// csrfToken is the CSRF token of the console's requests made with tok:
// an HMAC of the token's hash, so stateless and the same on every
// replica; "" for a token without a hash.
func (s *Server) csrfToken(tok store.Token) string {
	if len(tok.Hash) == 0 {
		return ""
	}
	m := hmac.New(sha256.New, s.consoleKey(csrfLabel))
	m.Write(tok.Hash)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// setConsoleCookie gives the browser its credential until expires, or
// clears it (token ""): httpOnly, SameSite=Lax, Secure over TLS.
func (s *Server) setConsoleCookie(w http.ResponseWriter, r *http.Request, token string, expires time.Time) {
	c := &http.Cookie{Name: sdk.ConsoleCookie, Value: token, Path: "/",
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode}
	if token == "" {
		c.MaxAge = -1
	} else {
		c.Expires = expires.UTC()
		c.MaxAge = max(1, int(expires.Sub(s.now())/time.Second))
	}
	http.SetCookie(w, c)
	w.Header().Set("Cache-Control", "no-store")
}

// consoleSessionOf is GET /api/v1/console/session's answer for the
// caller authenticated with tok.
func (a *API) consoleSessionOf(r *http.Request, caller store.User, tok store.Token) (sdk.ConsoleSession, error) {
	who, err := a.whoamiOf(r.WithContext(withToken(r.Context(), tok)), caller)
	if err != nil {
		return sdk.ConsoleSession{}, err
	}
	return sdk.ConsoleSession{Whoami: who, CSRF: a.s.csrfToken(tok), SSO: a.s.sso != nil}, nil
}

// consoleSession is GET /api/v1/console/session: who the browser is
// signed in as, and its CSRF token (a bearer caller gets its own, which
// it does not need).
func (a *API) consoleSession(w http.ResponseWriter, r *http.Request, caller store.User) error {
	out, err := a.consoleSessionOf(r, caller, callerToken(r))
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// consoleLogin is POST /api/v1/console/login: an API token, checked as
// authenticate checks it, makes a child token for the browser, set in the
// console's cookie.
func (a *API) consoleLogin(w http.ResponseWriter, r *http.Request) error {
	if r.Header.Get("Origin") != "" && !fromConsoleOrigin(r) {
		// Another site's page must not sign the browser in to an
		// account of its choosing.
		return errForeignOrigin(r)
	}
	var req sdk.ConsoleLogin
	if err := httpapi.Read(w, r, &req); err != nil {
		return err
	}
	secret := strings.TrimSpace(req.Token)
	if secret == "" {
		return errConsoleNoToken
	}
	user, parent, err := a.s.tokenCaller(r.Context(), secret, useConsoleLogin)
	if err != nil {
		return err
	}
	now := a.s.now()
	expires := now.Add(consoleTokenTTL)
	if !parent.ExpiresAt.IsZero() && parent.ExpiresAt.Before(expires) {
		expires = parent.ExpiresAt
	}
	var (
		token string
		child store.Token
	)
	err = a.s.store.InTx(r.Context(), func(tx store.Store) error {
		// Read again in the transaction, which a revocation's waits for:
		// a child minted of a token revoked meanwhile would outlive it.
		cur, err := tx.TokenByID(r.Context(), parent.ID)
		if err != nil {
			return err
		}
		if !cur.RevokedAt.IsZero() {
			return httpapi.Errorf(http.StatusUnauthorized, "this API token was revoked; ask an administrator for a new one")
		}
		token, child, err = mintToken(r.Context(), tx, store.Token{UserID: user.ID, Name: consoleTokenName, CreatedAt: now,
			ExpiresAt: expires, ParentID: parent.ID, Scope: parent.Scope, Method: parent.Method})
		if err != nil {
			return err
		}
		return a.s.audit(r.Context(), tx, user.Name, "auth.login", "", user.Name, nil,
			map[string]any{"method": sdk.AuthToken, "flow": sdk.FlowWeb, "token": parent.Prefix, "expires_at": expires.UTC()})
	})
	if err != nil {
		return err
	}
	out, err := a.consoleSessionOf(r, user, child)
	if err != nil {
		return err
	}
	a.s.setConsoleCookie(w, r, token, expires)
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// consoleLogout is POST /api/v1/console/logout: it ends the cookie's
// credential (a console token is revoked; a single sign-on ends as
// `devgpu logout` ends one) and clears the cookie. A cookie that no
// longer works is only cleared.
func (a *API) consoleLogout(w http.ResponseWriter, r *http.Request) error {
	c, err := r.Cookie(sdk.ConsoleCookie)
	if err != nil || c.Value == "" {
		a.s.setConsoleCookie(w, r, "", time.Time{})
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	user, tok, err := a.s.tokenCaller(r.Context(), c.Value, useCookie)
	var he *httpapi.Error
	if errors.As(err, &he) && he.Status == http.StatusUnauthorized {
		a.s.setConsoleCookie(w, r, "", time.Time{})
		w.WriteHeader(http.StatusNoContent)
		return nil
	} else if err != nil {
		return err
	}
	// Logging out changes state: another site's page must not do it.
	if err := a.s.checkConsoleRequest(r, tok); err != nil {
		return err
	}
	if tok.Method == store.TokenMethodSSO {
		err = a.s.logOutSSO(r.Context(), tok, user.Name)
	} else {
		err = a.s.store.InTx(r.Context(), func(tx store.Store) error {
			if err := tx.RevokeToken(r.Context(), tok.ID, a.s.now()); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return a.s.audit(r.Context(), tx, user.Name, "auth.end", "", user.Name, nil,
				map[string]any{"reason": endLoggedOut, "method": sdk.AuthToken, "flow": sdk.FlowWeb})
		})
	}
	if err != nil {
		return err
	}
	a.s.setConsoleCookie(w, r, "", time.Time{})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ssoState is what a web sign-in keeps, sealed in its cookie, from its
// start to its callback.
type ssoState struct {
	State    string    `json:"state"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier"`
	Expires  time.Time `json:"expires"`
}

// randomString is 32 random bytes, base64url.
func randomString() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// consoleSSOStart is GET /console/sso/start: it sends the browser to the
// identity provider's authorization endpoint (code flow with PKCE S256, a
// random state and nonce, kept sealed in a short-lived cookie for the
// callback).
func (a *API) consoleSSOStart(w http.ResponseWriter, r *http.Request) error {
	if a.s.sso == nil {
		return errNoWebSSO
	}
	st := ssoState{Verifier: oauth2.GenerateVerifier(), Expires: a.s.now().Add(ssoStateTTL)}
	var err error
	if st.State, err = randomString(); err != nil {
		return err
	}
	if st.Nonce, err = randomString(); err != nil {
		return err
	}
	authURL, err := a.s.sso.AuthCodeURL(r.Context(), consoleOrigin(r)+ssoCallbackPath, st.State, st.Nonce, st.Verifier)
	if err != nil {
		a.signInFailed(w, r, problemText(ssoError(err)))
		return nil
	}
	plain, err := json.Marshal(st)
	if err != nil {
		return err
	}
	sealed, err := sso.Seal(a.s.consoleKey(ssoStateLabel), string(plain))
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: ssoStateCookie, Value: base64.RawURLEncoding.EncodeToString(sealed), Path: ssoStatePath,
		Expires: st.Expires.UTC(), MaxAge: int(ssoStateTTL / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	redirect(w, authURL)
	return nil
}

// openSSOState reads the web sign-in's cookie; false when there is none,
// it does not open with this server's key, or it is too old.
func (s *Server) openSSOState(r *http.Request) (ssoState, bool) {
	c, err := r.Cookie(ssoStateCookie)
	if err != nil {
		return ssoState{}, false
	}
	sealed, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		return ssoState{}, false
	}
	plain, err := sso.Open(s.consoleKey(ssoStateLabel), sealed)
	if err != nil {
		return ssoState{}, false
	}
	var st ssoState
	if json.Unmarshal([]byte(plain), &st) != nil || st.State == "" || st.Nonce == "" || st.Verifier == "" || !s.now().Before(st.Expires) {
		return ssoState{}, false
	}
	return st, true
}

// errSSOStateMismatch: the callback's state is not the one this browser's
// sign-in started with (another browser's, a forged link, or too late).
const errSSOStateMismatch = "this sign-in did not start in this browser, or took more than 10 minutes; sign in again"

// consoleSSOCallback is GET /console/sso/callback, where the identity
// provider sends the browser back: the state must be this browser's
// sign-in's; the code is redeemed (with the PKCE verifier, and the
// client secret when configured) and its ID token verified with the
// nonce. The redemption is the proof of a live sign-in, so the groups
// are the ID token's and the refresh token the one it answered. The
// person is logged in as POST /api/v1/auth/oidc logs them in (flow web),
// and the cookie holds the credential. Every failure sends the browser to
// the login page with one sentence.
func (a *API) consoleSSOCallback(w http.ResponseWriter, r *http.Request) error {
	if a.s.sso == nil {
		return errNoWebSSO
	}
	// The state is for one callback.
	http.SetCookie(w, &http.Cookie{Name: ssoStateCookie, Path: ssoStatePath, MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	q := r.URL.Query()
	st, ok := a.s.openSSOState(r)
	if !ok || !hmac.Equal([]byte(q.Get("state")), []byte(st.State)) {
		a.signInFailed(w, r, errSSOStateMismatch)
		return nil
	}
	if e := q.Get("error"); e != "" {
		detail := e
		if d := q.Get("error_description"); d != "" {
			detail += ": " + d
		}
		a.signInFailed(w, r, "the identity provider did not sign you in ("+oneLine(detail)+"); sign in again, or ask your administrator")
		return nil
	}
	code := q.Get("code")
	if code == "" {
		a.signInFailed(w, r, "the identity provider sent the browser back without an authorization code; sign in again")
		return nil
	}
	ctx := r.Context()
	id, providerRefresh, err := a.s.sso.Exchange(ctx, code, st.Verifier, consoleOrigin(r)+ssoCallbackPath, st.Nonce)
	if err != nil {
		answer := ssoError(err)
		if !sso.IsUnreachable(err) {
			answer = a.s.loginRefused(ctx, sso.Identity{Name: unverified}, sdk.FlowWeb, problemText(answer), answer)
		}
		a.signInFailed(w, r, problemText(answer))
		return nil
	}
	if providerRefresh == "" {
		a.signInFailed(w, r, "the identity provider returned no refresh token, which devgpu needs to re-check your account; ask the administrator to add offline_access to the scopes (oidc.scopes in the server config) and allow refresh tokens for the client")
		return nil
	}
	if err := errUnusableName(id); err != nil {
		a.signInFailed(w, r, problemText(a.s.loginRefused(ctx, id, sdk.FlowWeb, refusedName, err)))
		return nil
	}
	cred, err := a.s.ssoLogin(ctx, id, providerRefresh, sdk.FlowWeb)
	if err != nil {
		var he *httpapi.Error
		switch {
		case storeUnreachable(err):
			err = errDatabaseUnreachable(err)
		case !errors.As(err, &he):
			a.log.Error("web single sign-on", "user", id.Name, "err", err)
			err = httpapi.Errorf(http.StatusInternalServerError, "devgpu could not complete the sign-in because of an internal error; try again, and tell the administrator if it fails again")
		}
		a.signInFailed(w, r, problemText(err))
		return nil
	}
	a.s.setConsoleCookie(w, r, cred.Token, cred.ExpiresAt)
	redirect(w, "/#/")
	return nil
}

// signInFailed sends the browser to the console's login page, which shows
// msg.
func (a *API) signInFailed(w http.ResponseWriter, r *http.Request, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	redirect(w, "/#/login?error="+url.QueryEscape(forBrowser(msg)))
}

// redirect answers 302 to target, as given (http.Redirect would clean a
// path holding the console's #/ route).
func redirect(w http.ResponseWriter, target string) {
	w.Header().Set("Location", target)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusFound)
}

// forBrowser words a sentence written for the CLI (`devgpu login`) for a
// person at the web console.
var forBrowser = strings.NewReplacer(
	"log in again with `devgpu login URL`", "sign in again",
	"log in again with `devgpu login`", "sign in again",
	"log in with `devgpu login URL`", "sign in again",
	"log in with `devgpu login`", "sign in again",
	"run `devgpu login URL` again", "sign in again",
).Replace

// oneLine is s, from the provider's redirect (which anyone can forge),
// on one line, cut to a length fit for a message, unprintable characters
// escaped.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return names.Escape(s)
}
