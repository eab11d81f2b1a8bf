package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
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
// holds a devgpu token in an httpOnly cookie (sdk.ConsoleCookie, or
// sdk.ConsoleCookieSecure over https), which authenticates like a bearer
// token (authenticate):
//
//   - POST /api/v1/console/login takes an API token and mints a child of
//     it for the browser ("web console": same scope, expires with it and
//     within consoleTokenTTL, revoked with it);
//   - GET /console/sso/start and /console/sso/callback run the
//     authorization code flow with PKCE against the identity provider,
//     server side, and log the person in as POST /api/v1/auth/oidc does
//     (ssoLogin, flow sdk.FlowWeb); the cookie holds that login's
//     credential and expires with it. Its redirect URI is under the
//     configured public URL (Config.PublicURL), never a request's Host,
//     which anyone can forge: without a public URL there is no single
//     sign-on in the browser;
//   - POST /api/v1/console/logout revokes the cookie's token.
//
// A request the cookie authenticates is held to checkConsoleRequest: a
// state change (any method but GET and HEAD) carries the login's CSRF
// token (csrfToken: stateless, the same on every replica) and, when the
// browser names its Origin, comes from the console's origin; a WebSocket
// comes from the console's origin. consoleOrigin alone decides that
// origin: the public URL's when one is configured (so that a reverse
// proxy may terminate TLS, as long as it passes the Host header on),
// otherwise the request's scheme (https when it came over TLS) and Host.
// The cookie never makes API tokens (notByConsoleCookie): a stolen or
// ridden browser login must not become a credential that outlives it.

const (
	// consoleTokenTTL is the longest a token login of the console lasts.
	consoleTokenTTL = 12 * time.Hour
	// consoleTokenName names the tokens minted for the browser.
	consoleTokenName = "web console"

	// ssoCallbackPath is the web sign-in's redirect URI, under the
	// public URL: register it with the identity provider.
	ssoCallbackPath = "/console/sso/callback"
	// ssoStateCookie keeps a web sign-in's state, nonce and PKCE verifier
	// (sealed) between its start and its callback, under ssoStatePath;
	// over https it is ssoStateCookieSecure, which the __Host- prefix
	// binds to Path=/.
	ssoStateCookie       = "devgpu_sso"
	ssoStateCookieSecure = "__Host-" + ssoStateCookie
	ssoStatePath         = "/console/sso"
	// ssoStateTTL is how long a web sign-in may take at the provider.
	ssoStateTTL = 10 * time.Minute
	// loginErrorTTL is how long a failed sign-in's sentence waits in
	// sdk.LoginErrorCookie for the login page to show it.
	loginErrorTTL = 60 * time.Second

	// Labels of the keys derived from the agent key (consoleKey): one per
	// use, so that neither can stand for the other nor for the agent
	// secrets.
	csrfLabel     = "devgpu console csrf v1"
	ssoStateLabel = "devgpu console sso state v1"
)

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
	errNoPublicURL = httpapi.Errorf(http.StatusNotFound,
		"single sign-on in the web console needs the server's public URL, which is not configured; sign in with an API token, or ask the administrator to set public_url in the server config (or --public-url) to the https:// URL people open the console at")
	errTokenFromConsole = httpapi.Errorf(http.StatusForbidden,
		"API tokens are made with the CLI (`devgpu admin token create` / `devgpu login`), not from the web console's login")
	errUserFromConsole = httpapi.Errorf(http.StatusForbidden,
		"users are made with the CLI (`devgpu admin user create`, which answers their first API token), not from the web console's login")
)

func (s *Server) errForeignOrigin(r *http.Request) error {
	return httpapi.Errorf(http.StatusForbidden,
		"this request came from the page of another site (%q), not from this server's web console; open the console at %s", r.Header.Get("Origin"), s.consoleOrigin(r))
}

func (s *Server) errForeignWebSocket(r *http.Request) error {
	from := r.Header.Get("Origin")
	if from == "" {
		from = "no page"
	}
	return httpapi.Errorf(http.StatusForbidden,
		"a WebSocket signed in with the web console's cookie opens only from the console's own pages, and this one came from %q; open it from the console at %s", from, s.consoleOrigin(r))
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

// ParsePublicURL checks the URL people open the web console at (the
// server config's public_url, --public-url): an http:// or https:// URL
// with a host and nothing after it, plain http only on this machine's
// loopback. It answers the URL as consoleOrigin uses it: scheme and
// host in lower case, without a default port.
func ParsePublicURL(raw string) (*url.URL, error) {
	const example = "such as https://devgpu.example.com"
	u, err := url.Parse(strings.TrimSpace(raw))
	switch {
	case err != nil || !u.IsAbs() || u.Opaque != "" || (u.Scheme != "https" && u.Scheme != "http"):
		return nil, fmt.Errorf("the public URL %q (public_url, --public-url) is not an https:// URL; give the URL people open the web console at, %s", raw, example)
	case u.Hostname() == "":
		return nil, fmt.Errorf("the public URL %q (public_url, --public-url) names no host; give the URL people open the web console at, %s", raw, example)
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("the public URL %q (public_url, --public-url) has more than a scheme and a host, but the web console is served at the root of its host; give the URL without a user, path, query or fragment, %s", raw, example)
	case u.Scheme == "http" && !loopbackHost(u.Hostname()):
		return nil, fmt.Errorf("the public URL %q (public_url, --public-url) is plain http on a host other than this machine's loopback, so the console's cookie would cross the network unencrypted; give its https:// URL (plain http is for localhost and 127.0.0.1 only)", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: withoutDefaultPort(strings.ToLower(u.Host), u.Scheme)}, nil
}

// loopbackHost reports whether host (a name or an address) is this
// machine's loopback.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// withoutDefaultPort is host (host or host:port) without scheme's default
// port, as a browser writes it in an Origin header.
func withoutDefaultPort(host, scheme string) string {
	switch {
	case scheme == "https" && strings.HasSuffix(host, ":443"):
		return strings.TrimSuffix(host, ":443")
	case scheme == "http" && strings.HasSuffix(host, ":80"):
		return strings.TrimSuffix(host, ":80")
	}
	return host
}

// consoleOrigin is the origin of the web console's pages, which their
// requests name in their Origin header: the public URL's when one is
// configured, otherwise as the request reached the server (https when it
// came over TLS, and its Host). It alone decides the console's origin:
// the CSRF, login and WebSocket checks (the terminal's too) ask it.
func (s *Server) consoleOrigin(r *http.Request) string {
	if u := s.cfg.PublicURL; u != nil {
		return u.Scheme + "://" + u.Host
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// fromConsoleOrigin reports whether the request's Origin is the
// console's ("null", another scheme, host or port is not; nor is a
// request that names none).
func (s *Server) fromConsoleOrigin(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Origin"), s.consoleOrigin(r))
}

// consoleSecure reports whether the console's pages are served over
// https: the public URL's scheme when one is configured (TLS may end at a
// proxy), otherwise whether the request came over TLS. Its cookies are
// then Secure and their names __Host- prefixed.
func (s *Server) consoleSecure(r *http.Request) bool {
	if u := s.cfg.PublicURL; u != nil {
		return u.Scheme == "https"
	}
	return r.TLS != nil
}

// consoleCookieName is the console cookie's name for the request's
// scheme: only that one is set and read, so that over https no cookie
// without the __Host- prefix (which a sibling host could have set) is
// taken.
func (s *Server) consoleCookieName(r *http.Request) string {
	if s.consoleSecure(r) {
		return sdk.ConsoleCookieSecure
	}
	return sdk.ConsoleCookie
}

// checkConsoleRequest holds a request that the console's cookie
// authenticated with tok to what only the console's own pages can do: an
// upgrade (a WebSocket) comes from the server's own origin; a state
// change (any method but GET and HEAD) carries tok's CSRF token and, when
// the browser names an Origin, comes from the server's own.
func (s *Server) checkConsoleRequest(r *http.Request, tok store.Token) error {
	if r.Header.Get("Upgrade") != "" {
		if !s.fromConsoleOrigin(r) {
			return s.errForeignWebSocket(r)
		}
		return nil
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	if r.Header.Get("Origin") != "" && !s.fromConsoleOrigin(r) {
		return s.errForeignOrigin(r)
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
// clears it (token ""): httpOnly, SameSite=Lax, Path=/, Secure and
// __Host- named over https (consoleSecure).
func (s *Server) setConsoleCookie(w http.ResponseWriter, r *http.Request, token string, expires time.Time) {
	c := &http.Cookie{Name: s.consoleCookieName(r), Value: token, Path: "/",
		HttpOnly: true, Secure: s.consoleSecure(r), SameSite: http.SameSiteLaxMode}
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
	return sdk.ConsoleSession{Whoami: who, CSRF: a.s.csrfToken(tok), SSO: a.s.sso != nil && a.s.cfg.PublicURL != nil}, nil
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
	if r.Header.Get("Origin") != "" && !a.s.fromConsoleOrigin(r) {
		// Another site's page must not sign the browser in to an
		// account of its choosing.
		return a.s.errForeignOrigin(r)
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
	c, err := r.Cookie(a.s.consoleCookieName(r))
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

// checkWebSSO refuses the web console's single sign-on where it cannot
// run safely: without an identity provider; without a public URL, the
// only place its redirect URI may come from; and at a Host other than
// the public URL's (its cookies would not come back to the callback, and
// a forged Host is how an attacker would try to reroute the code).
func (s *Server) checkWebSSO(r *http.Request) error {
	if s.sso == nil {
		return errNoWebSSO
	}
	u := s.cfg.PublicURL
	if u == nil {
		return errNoPublicURL
	}
	if !strings.EqualFold(withoutDefaultPort(r.Host, u.Scheme), u.Host) {
		return httpapi.Errorf(http.StatusForbidden,
			"this request reached the server as host %q, not as the public URL's %q, and single sign-on runs only there; open the console at %s (behind a reverse proxy, pass the Host header on)",
			r.Host, u.Host, s.consoleOrigin(r))
	}
	return nil
}

// ssoRedirectURI is the web sign-in's redirect URI: the callback under
// the public URL (checkWebSSO passed).
func (s *Server) ssoRedirectURI() string {
	return s.cfg.PublicURL.Scheme + "://" + s.cfg.PublicURL.Host + ssoCallbackPath
}

// ssoStateCookieFor is the state cookie's name and path for the
// request's scheme (a __Host- cookie must have Path=/).
func (s *Server) ssoStateCookieFor(r *http.Request) (name, path string) {
	if s.consoleSecure(r) {
		return ssoStateCookieSecure, "/"
	}
	return ssoStateCookie, ssoStatePath
}

// consoleSSOStart is GET /console/sso/start: it sends the browser to the
// identity provider's authorization endpoint (code flow with PKCE S256, a
// random state and nonce, kept sealed in a short-lived cookie for the
// callback), with the callback under the public URL as redirect URI.
func (a *API) consoleSSOStart(w http.ResponseWriter, r *http.Request) error {
	if err := a.s.checkWebSSO(r); err != nil {
		return err
	}
	st := ssoState{Verifier: oauth2.GenerateVerifier(), Expires: a.s.now().Add(ssoStateTTL)}
	var err error
	if st.State, err = randomString(); err != nil {
		return err
	}
	if st.Nonce, err = randomString(); err != nil {
		return err
	}
	authURL, err := a.s.sso.AuthCodeURL(r.Context(), a.s.ssoRedirectURI(), st.State, st.Nonce, st.Verifier)
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
	name, path := a.s.ssoStateCookieFor(r)
	http.SetCookie(w, &http.Cookie{Name: name, Value: base64.RawURLEncoding.EncodeToString(sealed), Path: path,
		Expires: st.Expires.UTC(), MaxAge: int(ssoStateTTL / time.Second), HttpOnly: true, Secure: a.s.consoleSecure(r), SameSite: http.SameSiteLaxMode})
	redirect(w, authURL)
	return nil
}

// openSSOState reads the web sign-in's cookie (the name for the
// request's scheme); false when there is none, it does not open with this
// server's key, or it is too old.
func (s *Server) openSSOState(r *http.Request) (ssoState, bool) {
	name, _ := s.ssoStateCookieFor(r)
	c, err := r.Cookie(name)
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
// sign-in's; the code is redeemed (with the PKCE verifier, the public
// URL's redirect URI, and the client secret when configured) and its ID
// token verified with the nonce. The redemption is the proof of a live
// sign-in, so the groups are the ID token's and the refresh token the one
// it answered. The person is logged in as POST /api/v1/auth/oidc logs
// them in (flow web), and the cookie holds the credential. Every failure
// sends the browser to the login page with one sentence (signInFailed).
//
// Only a callback whose state checked out counts against the address's
// login limit: any page can make its visitors' browsers request this URL
// (an <img>), and those must not lock out everyone behind the address.
func (a *API) consoleSSOCallback(w http.ResponseWriter, r *http.Request) error {
	if err := a.s.checkWebSSO(r); err != nil {
		return err
	}
	// The state is for one callback.
	name, path := a.s.ssoStateCookieFor(r)
	http.SetCookie(w, &http.Cookie{Name: name, Path: path, MaxAge: -1,
		HttpOnly: true, Secure: a.s.consoleSecure(r), SameSite: http.SameSiteLaxMode})
	q := r.URL.Query()
	st, ok := a.s.openSSOState(r)
	if !ok || !hmac.Equal([]byte(q.Get("state")), []byte(st.State)) {
		a.signInFailed(w, r, errSSOStateMismatch)
		return nil
	}
	if l := a.s.authLimit; l != nil {
		if ok, _ := l.allow(limitKey(remoteHost(r.RemoteAddr))); !ok {
			a.signInFailed(w, r, errTooManyLogins)
			return nil
		}
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
	id, providerRefresh, err := a.s.sso.Exchange(ctx, code, st.Verifier, a.s.ssoRedirectURI(), st.Nonce)
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
	a.s.setLoginError(w, r, "") // an earlier failure's sentence is stale now
	redirect(w, "/#/")
	return nil
}

// signInFailed sends the browser to the console's login page, which shows
// msg. The sentence travels in a short-lived cookie the page reads
// (setLoginError), never in the URL: a link anyone can make must not put
// their words on this server's login page.
func (a *API) signInFailed(w http.ResponseWriter, r *http.Request, msg string) {
	a.s.setLoginError(w, r, forBrowser(msg))
	redirect(w, "/#/login")
}

// setLoginError gives the login page msg in sdk.LoginErrorCookie for
// loginErrorTTL, or clears it (msg ""): readable by the page's script,
// SameSite=Lax, Path=/, Secure over https, URL-encoded as
// encodeURIComponent does (decodeURIComponent reads it).
func (s *Server) setLoginError(w http.ResponseWriter, r *http.Request, msg string) {
	c := &http.Cookie{Name: sdk.LoginErrorCookie, Value: strings.ReplaceAll(url.QueryEscape(msg), "+", "%20"), Path: "/",
		Secure: s.consoleSecure(r), SameSite: http.SameSiteLaxMode, MaxAge: int(loginErrorTTL / time.Second)}
	if msg == "" {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
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
