package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

// browser is a person's browser at the web console: a cookie jar, no
// redirect followed, and the CSRF token its pages would hold.
type browser struct {
	t    *testing.T
	base string // the server's URL
	c    *http.Client
	csrf string
}

// newBrowser is a browser at base; client, if not nil, is the transport's
// (a TLS test server's).
func newBrowser(t *testing.T, base string, client *http.Client) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{}
	if client != nil {
		c.Transport = client.Transport
	}
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, base: base, c: c}
}

// do sends a request from the console's page: header adds to it (an
// Origin, a CSRF token), nothing else is added.
func (b *browser) do(method, path string, body any, header http.Header) (*http.Response, []byte) {
	b.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(must(json.Marshal(body)))
	}
	req, err := http.NewRequestWithContext(testutil.Context(b.t, testutil.WaitMedium), method, b.target(path), rd)
	if err != nil {
		b.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if h := header.Get("Host"); h != "" {
		req.Host = h // a forged Host, as curl -H sends it
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, data
}

func (b *browser) target(path string) string {
	if strings.HasPrefix(path, "http") {
		return path
	}
	return b.base + path
}

// login signs in with an API token as the login page does, keeping the
// CSRF token it answers.
func (b *browser) login(token string) (*http.Response, []byte) {
	b.t.Helper()
	resp, body := b.do(http.MethodPost, "/api/v1/console/login", sdk.ConsoleLogin{Token: token}, http.Header{"Origin": {b.base}})
	if resp.StatusCode == http.StatusOK {
		var s sdk.ConsoleSession
		if err := json.Unmarshal(body, &s); err != nil || s.CSRF == "" {
			b.t.Fatalf("console login answered %s: %v", body, err)
		}
		b.csrf = s.CSRF
	}
	return resp, body
}

func (b *browser) mustLogin(token string) {
	b.t.Helper()
	if resp, body := b.login(token); resp.StatusCode != http.StatusOK {
		b.t.Fatalf("console login: %d %s", resp.StatusCode, body)
	}
}

// whoami is GET /api/v1/whoami with the browser's cookie.
func (b *browser) whoami() (int, sdk.Whoami, string) {
	b.t.Helper()
	resp, body := b.do(http.MethodGet, "/api/v1/whoami", nil, nil)
	var w sdk.Whoami
	_ = json.Unmarshal(body, &w)
	return resp.StatusCode, w, problemDetail(body)
}

// cookie is the console cookie the jar holds, under either name ("" when
// none).
func (b *browser) cookie() string {
	u := must(url.Parse(b.base))
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == sdk.ConsoleCookie || c.Name == sdk.ConsoleCookieSecure {
			return c.Value
		}
	}
	return ""
}

// own is the headers of a request from the console's page.
func (b *browser) own() http.Header {
	return http.Header{"Origin": {b.base}, sdk.CSRFHeader: {b.csrf}}
}

func problemDetail(body []byte) string {
	var p sdk.Problem
	_ = json.Unmarshal(body, &p)
	return p.Detail
}

// consoleCookieOf is the console cookie a response sets, under either
// name.
func consoleCookieOf(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	if c := cookieOf(resp, sdk.ConsoleCookie, sdk.ConsoleCookieSecure); c != nil {
		return c
	}
	t.Fatalf("the response sets no %s cookie (Set-Cookie %q)", sdk.ConsoleCookie, resp.Header.Values("Set-Cookie"))
	return nil
}

// cookieOf is the first cookie resp sets under one of names; nil when
// none.
func cookieOf(resp *http.Response, names ...string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if slices.Contains(names, c.Name) {
			return c
		}
	}
	return nil
}

// A token login sets an httpOnly, SameSite=Lax cookie, Secure over TLS
// alone, holding a child of the token that expires with it and within
// 12 hours, has its scope, and authenticates the API.
func TestConsoleTokenLogin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tls := httptest.NewTLSServer(f.srv.Handler())
	t.Cleanup(tls.Close)

	for _, c := range []struct {
		name   string
		base   string
		client *http.Client
		secure bool
		cookie string
	}{{"http", f.url, nil, false, sdk.ConsoleCookie}, {"https", tls.URL, tls.Client(), true, sdk.ConsoleCookieSecure}} {
		b := newBrowser(t, c.base, c.client)
		before := time.Now()
		resp, body := b.login(f.dev)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: login: %d %s", c.name, resp.StatusCode, body)
		}
		ck := consoleCookieOf(t, resp)
		if ck.Name != c.cookie || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" || ck.Domain != "" || ck.Secure != c.secure {
			t.Errorf("%s: cookie %s HttpOnly=%v SameSite=%v Path=%q Domain=%q Secure=%v; want %s, httpOnly, Lax, /, no domain, Secure=%v",
				c.name, ck.Name, ck.HttpOnly, ck.SameSite, ck.Path, ck.Domain, ck.Secure, c.cookie, c.secure)
		}
		if ck.MaxAge <= 0 || time.Duration(ck.MaxAge)*time.Second > consoleTokenTTL || ck.Expires.After(before.Add(consoleTokenTTL+time.Minute)) {
			t.Errorf("%s: cookie Max-Age %d, Expires %s; want at most %s", c.name, ck.MaxAge, ck.Expires, consoleTokenTTL)
		}
		if ck.Value == f.dev {
			t.Errorf("%s: the cookie holds the API token itself, not a token of its own", c.name)
		}
		var s sdk.ConsoleSession
		_ = json.Unmarshal(body, &s)
		if s.User != "dev" || s.Auth != sdk.AuthToken || s.SSO || s.ExpiresAt == nil {
			t.Errorf("%s: login answered %+v", c.name, s)
		}
		if code, w, detail := b.whoami(); code != http.StatusOK || w.User != "dev" {
			t.Errorf("%s: whoami with the cookie: %d %q", c.name, code, detail)
		}
		resp, body = b.do(http.MethodGet, "/api/v1/console/session", nil, nil)
		var again sdk.ConsoleSession
		_ = json.Unmarshal(body, &again)
		if resp.StatusCode != http.StatusOK || again.CSRF != s.CSRF || again.User != "dev" {
			t.Errorf("%s: console session: %d %s; want the login's CSRF token", c.name, resp.StatusCode, body)
		}
		// Only the name of the request's scheme is read: over https a
		// cookie without the __Host- prefix (a sibling host can set one)
		// is not, nor is the prefixed one over http.
		other := sdk.ConsoleCookieSecure
		if c.secure {
			other = sdk.ConsoleCookie
		}
		tossed := newBrowser(t, c.base, c.client)
		tossed.c.Jar.SetCookies(must(url.Parse(c.base)), []*http.Cookie{{Name: other, Value: ck.Value, Path: "/"}})
		if code, _, detail := tossed.whoami(); code != http.StatusUnauthorized {
			t.Errorf("%s: the login's token in a cookie named %s authenticates: %d %q; want 401", c.name, other, code, detail)
		}
	}

	// The browser's token is a child of the API token: same scope, no
	// later expiry, named "web console".
	admin := newBrowser(t, f.url, nil)
	code, body := f.call(f.admin, http.MethodPost, "/api/v1/tokens",
		sdk.TokenCreate{Name: "short", ExpiresIn: sdk.Duration(time.Hour), Scope: sdk.TokenScopeDeveloper})
	var short sdk.TokenCreated
	if code != http.StatusCreated || json.Unmarshal(body, &short) != nil {
		t.Fatalf("create a developer-scoped token: %d %s", code, body)
	}
	admin.mustLogin(short.Secret)
	code, w, _ := admin.whoami()
	if code != http.StatusOK || w.User != "root" || w.OrgAdmin || w.ExpiresAt == nil || w.ExpiresAt.After(*short.Token.ExpiresAt) {
		t.Errorf("whoami with a developer-scoped token's console login: %d %+v; want root, no organisation admin, expiring by %s", code, w, short.Token.ExpiresAt)
	}
	code, body = f.call(f.admin, http.MethodGet, "/api/v1/tokens?user=root", nil)
	var tokens []sdk.Token
	_ = json.Unmarshal(body, &tokens)
	found := false
	for _, tk := range tokens {
		if tk.Name == consoleTokenName && tk.ParentID == short.Token.ID {
			found = true
			if tk.Scope != sdk.TokenScopeDeveloper {
				t.Errorf("the console's token has scope %q, not its parent's developer scope", tk.Scope)
			}
		}
	}
	if code != http.StatusOK || !found {
		t.Errorf("no %q token whose parent is the API token among root's tokens: %d %s", consoleTokenName, code, body)
	}
	if n := countAudit(t, f.srv.store, "auth.login", "root"); n != 1 {
		t.Errorf("root's console login is audited %d times as auth.login, want 1", n)
	}
}

func countAudit(t *testing.T, st store.Store, action, target string) int {
	t.Helper()
	events, err := st.ListAudit(context.Background(), store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range events {
		if e.Action == action && e.Target == target {
			n++
		}
	}
	return n
}

// Attacks on a signed-in browser from another site, performed: a state
// change without the CSRF token, with a wrong one, with another login's,
// and with the right one from a foreign Origin are refused and change
// nothing; the console's own request goes through; the CLI's bearer
// requests need no CSRF token.
func TestConsoleCSRF(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := newBrowser(t, f.url, nil)
	b.mustLogin(f.admin)
	other := newBrowser(t, f.url, nil)
	other.mustLogin(f.admin)

	maxGPUs := func() int {
		t.Helper()
		code, body := f.call(f.admin, http.MethodGet, "/api/v1/projects/default", nil)
		var p sdk.Project
		if code != http.StatusOK || json.Unmarshal(body, &p) != nil {
			t.Fatalf("read the project: %d %s", code, body)
		}
		if p.Settings.MaxGPUs == nil {
			return 0
		}
		return *p.Settings.MaxGPUs
	}
	patch := func(n int) sdk.ProjectUpdate { return sdk.ProjectUpdate{Settings: sdk.ProjectSettings{MaxGPUs: &n}} }
	before := maxGPUs()

	for _, c := range []struct {
		name   string
		header http.Header
		detail string
	}{
		{"no CSRF token", http.Header{"Origin": {f.url}}, "without its CSRF token"},
		{"no CSRF token and no Origin", nil, "without its CSRF token"},
		{"a wrong CSRF token", http.Header{"Origin": {f.url}, sdk.CSRFHeader: {"forged"}}, "without its CSRF token"},
		{"another login's CSRF token", http.Header{"Origin": {f.url}, sdk.CSRFHeader: {other.csrf}}, "without its CSRF token"},
		{"a foreign Origin", http.Header{"Origin": {"http://evil.example"}, sdk.CSRFHeader: {b.csrf}}, "another site"},
		{"Origin null", http.Header{"Origin": {"null"}, sdk.CSRFHeader: {b.csrf}}, "another site"},
		{"another port", http.Header{"Origin": {otherPort(f.url)}, sdk.CSRFHeader: {b.csrf}}, "another site"},
	} {
		resp, body := b.do(http.MethodPatch, "/api/v1/projects/default", patch(before+7), c.header)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), c.detail) {
			t.Errorf("%s: %d %s; want 403 saying %q", c.name, resp.StatusCode, body, c.detail)
		}
		if got := maxGPUs(); got != before {
			t.Fatalf("%s: the project's max_gpus changed from %d to %d", c.name, before, got)
		}
	}
	// Other state changes too: a new token, a logout of the CLI's kind.
	if resp, body := b.do(http.MethodPost, "/api/v1/tokens", sdk.TokenCreate{Name: "stolen"}, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a token made with the cookie and no CSRF token: %d %s; want 403", resp.StatusCode, body)
	}
	if resp, body := b.do(http.MethodPost, "/api/v1/auth/logout", nil, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /auth/logout with the cookie and no CSRF token: %d %s; want 403", resp.StatusCode, body)
	}

	// The console's own request, with or without an Origin.
	if resp, body := b.do(http.MethodPatch, "/api/v1/projects/default", patch(before+1), b.own()); resp.StatusCode != http.StatusOK {
		t.Fatalf("the console's own change: %d %s", resp.StatusCode, body)
	}
	if got := maxGPUs(); got != before+1 {
		t.Errorf("after the console's change max_gpus is %d, want %d", got, before+1)
	}
	if resp, body := b.do(http.MethodPatch, "/api/v1/projects/default", patch(before+2), http.Header{sdk.CSRFHeader: {b.csrf}}); resp.StatusCode != http.StatusOK {
		t.Errorf("a change with the CSRF token and no Origin: %d %s", resp.StatusCode, body)
	}
	// The CLI's bearer token needs no CSRF token, even beside the cookie's
	// browser (the header wins; the cookie is not read).
	if code, body := f.call(f.admin, http.MethodPatch, "/api/v1/projects/default", patch(before+3)); code != http.StatusOK {
		t.Errorf("a bearer change without a CSRF token: %d %s", code, body)
	}
	resp, body := b.do(http.MethodPatch, "/api/v1/projects/default", patch(before+4), http.Header{"Authorization": {"Bearer " + f.dev}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), "only the project's admins") {
		t.Errorf("a bearer request beside the admin's cookie acts as the bearer (dev): %d %s; want dev's 403", resp.StatusCode, body)
	}
	// Reads need none.
	if resp, body := b.do(http.MethodGet, "/api/v1/projects/default", nil, http.Header{"Origin": {"http://evil.example"}}); resp.StatusCode != http.StatusOK {
		t.Errorf("a read with the cookie: %d %s", resp.StatusCode, body)
	}
}

// otherPort is base with another port: another origin.
func otherPort(base string) string {
	u := must(url.Parse(base))
	port, _ := strconv.Atoi(u.Port())
	u.Host = u.Hostname() + ":" + strconv.Itoa(port+1)
	return u.String()
}

// A WebSocket opened with the console's cookie from another site's page,
// or from no page, is refused before it reaches the session; the
// console's own page opens it.
func TestConsoleWebSocketOrigin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	c := must(sdk.NewClient(f.url, f.dev))
	sess, err := c.CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sess.State != sdk.StateRunning {
		t.Fatalf("session %s is %s, want running", sess.ID, sess.State)
	}
	b := newBrowser(t, f.url, nil)
	b.mustLogin(f.dev)
	cookie := sdk.ConsoleCookie + "=" + b.cookie()
	ws := strings.Replace(f.url, "http://", "ws://", 1)
	for _, path := range []string{"/connect", "/terminal"} {
		endpoint := ws + "/api/v1/sessions/" + sess.ID + path
		for _, origin := range []string{"http://evil.example", "null", otherPort(f.url), ""} {
			h := http.Header{"Cookie": {cookie}}
			if origin != "" {
				h.Set("Origin", origin)
			}
			conn, resp, err := websocket.Dial(ctx, endpoint, &websocket.DialOptions{HTTPHeader: h})
			if err == nil {
				conn.CloseNow()
			}
			if resp == nil || resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s from %q with the cookie: %v; want 403", path, origin, err)
			}
		}
	}
	if got := must(c.Session(ctx, sess.ID)); got.Attachments != 0 {
		t.Errorf("the refused WebSockets left %d attachments", got.Attachments)
	}
	// The console's own page.
	conn, resp, err := websocket.Dial(ctx, ws+"/api/v1/sessions/"+sess.ID+"/connect",
		&websocket.DialOptions{HTTPHeader: http.Header{"Cookie": {cookie}, "Origin": {f.url}}})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("connect from the console's own origin: %d %v", status, err)
	}
	conn.Close(websocket.StatusNormalClosure, "")
}

// Logging out revokes the browser's token (CSRF-checked, as any state
// change), and revoking the API token it was made with ends it too.
func TestConsoleLogout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := newBrowser(t, f.url, nil)
	b.mustLogin(f.dev)
	old := b.cookie()

	// Another site cannot log the browser out.
	if resp, body := b.do(http.MethodPost, "/api/v1/console/logout", nil, http.Header{"Origin": {"http://evil.example"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout from another site: %d %s; want 403", resp.StatusCode, body)
	}
	if resp, body := b.do(http.MethodPost, "/api/v1/console/logout", nil, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout without the CSRF token: %d %s; want 403", resp.StatusCode, body)
	}
	if code, _, detail := b.whoami(); code != http.StatusOK {
		t.Fatalf("the refused logouts ended the login: %d %q", code, detail)
	}

	resp, body := b.do(http.MethodPost, "/api/v1/console/logout", nil, b.own())
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d %s", resp.StatusCode, body)
	}
	if ck := consoleCookieOf(t, resp); ck.MaxAge >= 0 || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" {
		t.Errorf("logout's cookie: %+v; want it cleared with the same attributes", ck)
	}
	if b.cookie() != "" {
		t.Errorf("the browser still holds the cookie after logout")
	}
	// The old cookie, kept by an attacker, no longer works.
	stale := newBrowser(t, f.url, nil)
	stale.c.Jar.SetCookies(must(url.Parse(f.url)), []*http.Cookie{{Name: sdk.ConsoleCookie, Value: old}})
	if code, _, detail := stale.whoami(); code != http.StatusUnauthorized || !strings.Contains(detail, "sign in again") {
		t.Errorf("the logged-out cookie: %d %q; want 401 saying to sign in again", code, detail)
	}
	sum := sha256.Sum256([]byte(old))
	if tok, _, err := f.srv.store.TokenByHash(context.Background(), sum[:]); err != nil || tok.RevokedAt.IsZero() {
		t.Errorf("the browser's token is not revoked after logout: %+v %v", tok, err)
	}
	if code, _ := f.call(f.dev, http.MethodGet, "/api/v1/whoami", nil); code != http.StatusOK {
		t.Errorf("logout revoked the API token the login was made with: %d", code)
	}
	if n := countAudit(t, f.srv.store, "auth.end", "dev"); n != 1 {
		t.Errorf("the logout is audited %d times as auth.end, want 1", n)
	}
	// Without a working cookie: cleared, 204.
	for _, br := range []*browser{newBrowser(t, f.url, nil), stale} {
		resp, body := br.do(http.MethodPost, "/api/v1/console/logout", nil, nil)
		if resp.StatusCode != http.StatusNoContent || consoleCookieOf(t, resp).MaxAge >= 0 {
			t.Errorf("logout without a working cookie: %d %s; want 204 clearing it", resp.StatusCode, body)
		}
	}

	// Revoking the API token ends the console login made with it.
	b.mustLogin(f.dev)
	code, body := f.call(f.dev, http.MethodGet, "/api/v1/tokens", nil)
	var tokens []sdk.Token
	_ = json.Unmarshal(body, &tokens)
	var parent int64
	for _, tk := range tokens {
		if tk.Name == "test" {
			parent = tk.ID
		}
	}
	if code != http.StatusOK || parent == 0 {
		t.Fatalf("dev's API token: %d %s", code, body)
	}
	if code, body := f.call(f.admin, http.MethodDelete, "/api/v1/tokens/"+strconv.FormatInt(parent, 10), nil); code != http.StatusOK {
		t.Fatalf("revoke dev's API token: %d %s", code, body)
	}
	if code, _, detail := b.whoami(); code != http.StatusUnauthorized || !strings.Contains(detail, "sign in again") {
		t.Errorf("the console login after its API token was revoked: %d %q; want 401", code, detail)
	}
}

// A token that cannot authenticate cannot log in either: unknown,
// revoked, expired, a disabled user's, a single sign-on credential; and
// another site's page cannot log the browser in.
func TestConsoleLoginRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	st := f.srv.store
	now := time.Now()
	mk := func(name string, expires time.Time, method string) string {
		t.Helper()
		u, err := st.UserByName(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := mintToken(ctx, st, store.Token{UserID: u.ID, Name: "t", CreatedAt: now, ExpiresAt: expires, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	revoked := mk("dev2", time.Time{}, store.TokenMethodAPI)
	sum := sha256.Sum256([]byte(revoked))
	tok, _, _ := st.TokenByHash(ctx, sum[:])
	if err := st.RevokeToken(ctx, tok.ID, now); err != nil {
		t.Fatal(err)
	}
	expired := mk("dev2", now.Add(-time.Minute), store.TokenMethodAPI)
	ssoCred := mk("dev2", now.Add(time.Hour), store.TokenMethodSSO)
	disabled := mk("other", time.Time{}, store.TokenMethodAPI)
	if code, body := f.call(f.admin, http.MethodPatch, "/api/v1/users/other", sdk.UserUpdate{Disabled: ptr(true)}); code != http.StatusOK {
		t.Fatalf("disable other: %d %s", code, body)
	}

	for _, c := range []struct {
		name, token string
		want        int
		detail      string
	}{
		{"unknown", "dgp_wrong", http.StatusUnauthorized, "not a valid devgpu API token"},
		{"empty", " ", http.StatusBadRequest, "carries no token"},
		{"revoked", revoked, http.StatusUnauthorized, "was revoked"},
		{"expired", expired, http.StatusUnauthorized, "expired"},
		{"a single sign-on credential", ssoCred, http.StatusUnauthorized, "not an API token"},
		{"a disabled user's", disabled, http.StatusUnauthorized, "disabled"},
	} {
		b := newBrowser(t, f.url, nil)
		resp, body := b.login(c.token)
		if resp.StatusCode != c.want || !strings.Contains(problemDetail(body), c.detail) {
			t.Errorf("%s: %d %s; want %d saying %q", c.name, resp.StatusCode, body, c.want, c.detail)
		}
		if b.cookie() != "" {
			t.Errorf("%s: a refused login set the cookie", c.name)
		}
	}
	b := newBrowser(t, f.url, nil)
	resp, body := b.do(http.MethodPost, "/api/v1/console/login", sdk.ConsoleLogin{Token: f.dev}, http.Header{"Origin": {"http://evil.example"}})
	if resp.StatusCode != http.StatusForbidden || b.cookie() != "" {
		t.Errorf("a login from another site's page: %d %s; want 403 and no cookie", resp.StatusCode, body)
	}
	if n := countAudit(t, st, "auth.login", "dev"); n != 0 {
		t.Errorf("refused logins audited as auth.login: %d", n)
	}
	// No identity provider: the web sign-in is not found.
	resp, body = b.do(http.MethodGet, "/console/sso/start", nil, nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(problemDetail(body), "no identity provider") {
		t.Errorf("web sign-in without an identity provider: %d %s; want 404", resp.StatusCode, body)
	}
}

// The console's token login is limited per address, as POST /auth/oidc.
func TestConsoleLoginRateLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	frozen := time.Now()
	f.srv.authLimit.now = func() time.Time { return frozen }
	b := newBrowser(t, f.url, nil)
	for i := range authBurst {
		if resp, body := b.login("dgp_guess"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("login %d of the burst: %d %s; want 401", i, resp.StatusCode, body)
		}
	}
	resp, body := b.login(f.dev)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a login past the burst: %d %s; want 429 with Retry-After", resp.StatusCode, body)
	}
}

// Where the organisation requires single sign-on, a person's API token
// cannot sign in to the console, nor can a console login made before
// go on; a service account's can.
func TestConsoleRequireSSO(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	before := newBrowser(t, r.url, nil)
	before.mustLogin(r.dev)
	ctx := testutil.Context(t, testutil.WaitMedium)
	admin := r.client(r.admin)
	// root is made a service account, whose API token keeps working.
	if _, err := admin.UpdateUser(ctx, "root", sdk.UserUpdate{ServiceAccount: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UpdateOrgPolicy(ctx, func(p sdk.OrgPolicy) (sdk.OrgPolicy, error) {
		p.RequireSSO = true
		return p, nil
	}); err != nil {
		t.Fatal(err)
	}
	r.srv.refreshSSOPolicy(ctx)
	b := newBrowser(t, r.url, nil)
	if resp, body := b.login(r.dev); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(problemDetail(body), "requires single sign-on") {
		t.Errorf("a person's API token where single sign-on is required: %d %s; want 401", resp.StatusCode, body)
	}
	if code, _, detail := before.whoami(); code != http.StatusUnauthorized || !strings.Contains(detail, "requires single sign-on") {
		t.Errorf("a console login made before single sign-on was required: %d %q; want 401", code, detail)
	}
	sa := newBrowser(t, r.url, nil)
	if resp, body := sa.login(r.admin); resp.StatusCode != http.StatusOK {
		t.Errorf("a service account's token: %d %s; want 200", resp.StatusCode, body)
	}
}

// startSignIn runs the web console's sign-in as the person up to the
// provider's redirect back: the console's start in browser b, then the
// provider's login form. It returns the callback URL, not yet followed.
func (r *ssoRig) startSignIn(b *browser, user string) *url.URL {
	r.t.Helper()
	resp, body := b.do(http.MethodGet, "/console/sso/start", nil, nil)
	if resp.StatusCode != http.StatusFound {
		r.t.Fatalf("sign-in start: %d %s", resp.StatusCode, body)
	}
	authURL := resp.Header.Get("Location")
	q := must(url.Parse(authURL)).Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") == "" ||
		q.Get("redirect_uri") != r.url+ssoCallbackPath || q.Get("client_id") != oidcop.WebClientID {
		r.t.Errorf("the authorization request lacks PKCE S256, a nonce, a state or the console's redirect: %s", authURL)
	}
	callback, err := r.op.Browse(testutil.Context(r.t, testutil.WaitMedium), authURL, user, password)
	if err != nil {
		r.t.Fatalf("sign in at the provider: %v", err)
	}
	return callback
}

// finishSignIn follows the callback in browser b and returns the
// response and where it sends the browser (signInError reads a
// failure's sentence).
func finishSignIn(t *testing.T, b *browser, callback *url.URL) (*http.Response, string) {
	t.Helper()
	resp, body := b.do(http.MethodGet, callback.String(), nil, nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("sign-in callback: %d %s", resp.StatusCode, body)
	}
	return resp, resp.Header.Get("Location")
}

// webSignIn is the whole web sign-in in browser b.
func (r *ssoRig) webSignIn(b *browser, user string) (*http.Response, string) {
	r.t.Helper()
	return finishSignIn(r.t, b, r.startSignIn(b, user))
}

// signInError is the sentence a failed sign-in's redirect to the login
// page gives it: in the login error cookie (scripts read it, 60 s), never
// in the URL, which anyone could make with words of their own.
func signInError(t *testing.T, resp *http.Response) string {
	t.Helper()
	if location := resp.Header.Get("Location"); location != "/#/login" {
		t.Fatalf("the sign-in went to %q, not the login page (/#/login)", location)
	}
	c := cookieOf(resp, sdk.LoginErrorCookie)
	if c == nil {
		t.Fatalf("the failed sign-in sets no %s cookie (Set-Cookie %q)", sdk.LoginErrorCookie, resp.Header.Values("Set-Cookie"))
	}
	secure := resp.Request.URL.Scheme == "https"
	if c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.MaxAge != 60 || c.Secure != secure {
		t.Errorf("the login error cookie: HttpOnly=%v SameSite=%v Path=%q Max-Age=%d Secure=%v; want readable by the page, Lax, /, 60, Secure=%v",
			c.HttpOnly, c.SameSite, c.Path, c.MaxAge, c.Secure, secure)
	}
	if strings.ContainsAny(c.Value, " +") {
		t.Errorf("the login error cookie %q is not encoded as encodeURIComponent encodes", c.Value)
	}
	msg, err := url.PathUnescape(c.Value)
	if err != nil || msg == "" {
		t.Fatalf("the login error cookie %q does not decode to a sentence: %v", c.Value, err)
	}
	return msg
}

// The web sign-in end to end against a real provider: the person is made
// just in time with the groups' memberships, the cookie authenticates,
// holds the single sign-on's credential and expires with it, and the
// server re-checks the login with the web client's secret.
func TestConsoleSSOWebSignIn(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{web: true})
	r.op.AddUser("wendy", password, grpGPU, grpMLDevs)
	b := newBrowser(t, r.url, nil)
	resp, location := r.webSignIn(b, "wendy")
	if location != "/#/" {
		t.Fatalf("the sign-in went to %q (%q), not the console", location, signInError(t, resp))
	}
	ck := consoleCookieOf(t, resp)
	if !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" || ck.Secure || ck.MaxAge <= 0 {
		t.Errorf("the sign-in's cookie: %+v", ck)
	}
	code, w, detail := b.whoami()
	if code != http.StatusOK || w.User != "wendy" || w.Auth != sdk.AuthSSO || w.ExpiresAt == nil {
		t.Fatalf("whoami with the sign-in's cookie: %d %+v %q", code, w, detail)
	}
	if d := w.ExpiresAt.Sub(ck.Expires); d > time.Second || d < -time.Second {
		t.Errorf("the cookie expires %s, the credential %s", ck.Expires, w.ExpiresAt)
	}
	if got := r.members("wendy"); !slices.Equal(got, []string{"default:developer:group", "ml:developer:group"}) {
		t.Errorf("wendy's memberships after the web sign-in: %v", got)
	}
	if r.audited("user.create", ssoActor, "wendy") != 1 || r.audited("auth.login", "wendy", "wendy") != 1 {
		t.Errorf("the web sign-in is not audited as user.create by sso and auth.login")
	}
	logins, err := r.st.ListSSOLogins(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	var login store.SSOLogin
	for _, l := range logins {
		if l.UserID == r.user("wendy").ID {
			login = l
		}
	}
	if login.ID == 0 || login.Flow != sdk.FlowWeb {
		t.Fatalf("wendy's login record: %+v; want flow web", login)
	}
	// The session endpoint gives the page its CSRF token, and says that
	// single sign-on is on.
	resp, body := b.do(http.MethodGet, "/api/v1/console/session", nil, nil)
	var s sdk.ConsoleSession
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &s) != nil || s.CSRF == "" || !s.SSO || s.User != "wendy" {
		t.Fatalf("console session: %d %s", resp.StatusCode, body)
	}
	b.csrf = s.CSRF
	resp, body = b.do(http.MethodGet, "/api/v1/auth/config", nil, nil)
	var ac sdk.AuthConfig
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &ac) != nil || !ac.WebLogin {
		t.Errorf("auth config with a public URL: %d %s; want web_login", resp.StatusCode, body)
	}

	// The server redeems the login's refresh token as the web client (a
	// confidential client's token needs its secret), and syncs what the
	// provider says now.
	r.op.SetGroups("wendy", grpGPU)
	if _, id, _, err := r.srv.recheck(testutil.Context(t, testutil.WaitMedium), login); err != nil || slices.Contains(id.Groups, grpMLDevs) {
		t.Errorf("re-check of the web login: %v (groups %v)", err, id.Groups)
	}

	// Logging out ends the single sign-on.
	if resp, body := b.do(http.MethodPost, "/api/v1/console/logout", nil, b.own()); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d %s", resp.StatusCode, body)
	}
	if r.audited("auth.end", "wendy", "wendy") != 1 {
		t.Errorf("the web logout is not audited as auth.end")
	}
	stale := newBrowser(t, r.url, nil)
	stale.c.Jar.SetCookies(must(url.Parse(r.url)), []*http.Cookie{{Name: sdk.ConsoleCookie, Value: ck.Value}})
	if code, _, _ := stale.whoami(); code != http.StatusUnauthorized {
		t.Errorf("the signed-out cookie: %d, want 401", code)
	}
}

// A callback whose state is not this browser's sign-in's (a forged link,
// another browser's code) is refused and makes nothing; so is a person
// no group lets in, audited.
func TestConsoleSSOWebSignInRefused(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{web: true})
	r.op.AddUser("mallory", password, grpGPU)
	r.op.AddUser("nobody", password, "unrelated")

	for _, c := range []struct {
		name   string
		tamper func(*url.URL)
	}{
		{"a wrong state", func(u *url.URL) {
			q := u.Query()
			q.Set("state", "forged")
			u.RawQuery = q.Encode()
		}},
		{"no state", func(u *url.URL) {
			q := u.Query()
			q.Del("state")
			u.RawQuery = q.Encode()
		}},
		{"another browser's", nil},
	} {
		b := newBrowser(t, r.url, nil)
		callback := r.startSignIn(b, "mallory")
		if c.tamper != nil {
			c.tamper(callback)
		} else {
			// The victim's browser follows a callback made in the
			// attacker's: it holds no state of that sign-in.
			b = newBrowser(t, r.url, nil)
		}
		resp, _ := finishSignIn(t, b, callback)
		if msg := signInError(t, resp); !strings.Contains(msg, "did not start in this browser") {
			t.Errorf("%s: the sign-in failed with %q", c.name, msg)
		}
		if b.cookie() != "" {
			t.Errorf("%s: a refused callback set the console cookie", c.name)
		}
	}
	if _, err := r.st.UserByName(context.Background(), "mallory"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused callback made the user: %v", err)
	}

	b := newBrowser(t, r.url, nil)
	resp, _ := r.webSignIn(b, "nobody")
	if msg := signInError(t, resp); !strings.Contains(msg, "none of the groups") || strings.Contains(msg, "devgpu login") {
		t.Errorf("a person no group lets in: %q", msg)
	}
	if b.cookie() != "" {
		t.Errorf("a refused sign-in set the console cookie")
	}
	if _, err := r.st.UserByName(context.Background(), "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused sign-in made the user: %v", err)
	}
	if r.audited("auth.refused", ssoActor, "nobody") != 1 {
		t.Errorf("the refused web sign-in is not audited as auth.refused")
	}
}

// listenerURL is the URL hs (not started) will serve at: https when tls.
func listenerURL(hs *httptest.Server, tls bool) *url.URL {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	return &url.URL{Scheme: scheme, Host: hs.Listener.Addr().String()}
}

// serveAt serves srv on hs (made with httptest.NewUnstartedServer, over
// TLS when tls) as serveHTTP does; it returns its URL and its client.
func serveAt(t *testing.T, hs *httptest.Server, tls bool, srv *Server, rt runtime.Runtime) (string, *http.Client) {
	t.Helper()
	hs.Config.Handler = srv.Handler()
	if tls {
		hs.StartTLS()
	} else {
		hs.Start()
	}
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
		for _, in := range must(rt.List(context.Background())) {
			_ = rt.Stop(context.Background(), in.SessionID)
		}
	})
	return hs.URL, hs.Client()
}

func TestParsePublicURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want, err string }{
		{"https://devgpu.example.com", "https://devgpu.example.com", ""},
		{"https://devgpu.example.com/", "https://devgpu.example.com", ""},
		{" HTTPS://DevGPU.Example.com:443/ ", "https://devgpu.example.com", ""},
		{"https://devgpu.example.com:8443", "https://devgpu.example.com:8443", ""},
		{"http://127.0.0.1:8470", "http://127.0.0.1:8470", ""},
		{"http://localhost:80", "http://localhost", ""},
		{"http://[::1]:8470/", "http://[::1]:8470", ""},
		{"http://devgpu.example.com", "", "plain http on a host other than this machine's loopback"},
		{"http://10.0.0.7:8470", "", "plain http"},
		{"devgpu.example.com", "", "is not an https:// URL"},
		{"ftp://devgpu.example.com", "", "is not an https:// URL"},
		{"", "", "is not an https:// URL"},
		{"https://", "", "names no host"},
		{"https://devgpu.example.com/console", "", "without a user, path, query or fragment"},
		{"https://devgpu.example.com/?x=1", "", "without a user, path, query or fragment"},
		{"https://devgpu.example.com/#/", "", "without a user, path, query or fragment"},
		{"https://me:pw@devgpu.example.com", "", "without a user, path, query or fragment"},
		{"https://devgpu.example.com:port", "", "is not an https:// URL"},
	} {
		u, err := ParsePublicURL(c.in)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("ParsePublicURL(%q): %v", c.in, err)
		case c.err == "" && u.String() != c.want:
			t.Errorf("ParsePublicURL(%q) = %s, want %s", c.in, u, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "public_url")):
			t.Errorf("ParsePublicURL(%q) = %v, %v; want an error naming public_url and saying %q", c.in, u, err, c.err)
		}
	}
}

// The attack the security review performed, which a request's Host once
// made work: the attacker gets an authorization request whose redirect
// URI is a host of theirs, lures the victim through it, and replays the
// victim's code at the callback with the forged Host and their own
// sign-in's state. A forged Host is refused at the start and at the
// callback, the redirect URI is always the public URL's, and the code
// sent elsewhere redeems nothing: no user, login or cookie is made.
func TestConsoleSSOForgedHost(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{web: true})
	r.op.AddUser("victim", password, grpGPU)
	// The attacker's host: one the provider's web client would accept
	// as a redirect (any loopback port), which a forged Host once put in
	// the authorization request.
	evil := must(url.Parse(otherPort(r.url))).Host
	attacker := newBrowser(t, r.url, nil)

	for _, host := range []string{"evil.example", evil} {
		resp, body := attacker.do(http.MethodGet, "/console/sso/start", nil, http.Header{"Host": {host}})
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), "not as the public URL's") || resp.Header.Get("Location") != "" {
			t.Errorf("start with Host %s: %d %s (Location %q); want 403 and no authorization request", host, resp.StatusCode, body, resp.Header.Get("Location"))
		}
		if c := cookieOf(resp, ssoStateCookie, ssoStateCookieSecure); c != nil {
			t.Errorf("start with Host %s set the state cookie", host)
		}
	}

	// The attacker starts a sign-in of their own and rewrites its
	// redirect URI to their host; the victim signs in through it, and
	// the provider sends the victim's code to the attacker.
	resp, body := attacker.do(http.MethodGet, "/console/sso/start", nil, nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("start: %d %s", resp.StatusCode, body)
	}
	authURL := must(url.Parse(resp.Header.Get("Location")))
	q := authURL.Query()
	if q.Get("redirect_uri") != r.url+ssoCallbackPath {
		t.Fatalf("the redirect URI is %q, not the public URL's callback", q.Get("redirect_uri"))
	}
	q.Set("redirect_uri", "http://"+evil+ssoCallbackPath)
	authURL.RawQuery = q.Encode()
	stolen, err := r.op.Browse(testutil.Context(t, testutil.WaitMedium), authURL.String(), "victim", password)
	if err != nil {
		t.Fatalf("the victim signs in through the attacker's request: %v", err)
	}
	if stolen.Host != evil || stolen.Query().Get("code") == "" {
		t.Fatalf("the provider sent the victim to %s, not to the attacker's host with a code", stolen)
	}
	// The replay at the real server, with the attacker's state cookie:
	// with the forged Host, then with the right one.
	replay := must(url.Parse(r.url + ssoCallbackPath))
	replay.RawQuery = stolen.RawQuery
	resp, body = attacker.do(http.MethodGet, replay.String(), nil, http.Header{"Host": {evil}})
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), "not as the public URL's") {
		t.Errorf("the replay with Host %s: %d %s; want 403", evil, resp.StatusCode, body)
	}
	resp, _ = attacker.do(http.MethodGet, replay.String(), nil, nil)
	if msg := signInError(t, resp); !strings.Contains(msg, "authorization code") {
		t.Errorf("the replay with the right Host: %q; want the provider's refusal of the code (its redirect URI was another)", msg)
	}
	if attacker.cookie() != "" {
		t.Errorf("the attacker's browser holds a console cookie")
	}
	if _, err := r.st.UserByName(context.Background(), "victim"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the attack made the victim's user: %v", err)
	}
	if logins, err := r.st.ListSSOLogins(context.Background(), true); err != nil || len(logins) != 0 {
		t.Errorf("the attack left single sign-on logins: %v %v", logins, err)
	}

	// The victim's own sign-in still works.
	victim := newBrowser(t, r.url, nil)
	if resp, location := r.webSignIn(victim, "victim"); location != "/#/" {
		t.Errorf("the victim's own sign-in: %q", signInError(t, resp))
	}
}

// Without a public URL the web sign-in does not run (its redirect URI
// would come from the request), and says what to configure; the API's
// single sign-on and token logins are unaffected.
func TestConsoleSSONeedsPublicURL(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	b := newBrowser(t, r.url, nil)
	for _, path := range []string{"/console/sso/start", ssoCallbackPath + "?state=s&code=c"} {
		resp, body := b.do(http.MethodGet, path, nil, nil)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(problemDetail(body), "public_url") {
			t.Errorf("%s without a public URL: %d %s; want 404 naming public_url", path, resp.StatusCode, body)
		}
	}
	b.mustLogin(r.dev)
	resp, body := b.do(http.MethodGet, "/api/v1/console/session", nil, nil)
	var s sdk.ConsoleSession
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &s) != nil || s.SSO {
		t.Errorf("console session without a public URL: %d %s; want sso false", resp.StatusCode, body)
	}
	// The login page reads, before anyone logs in, whether to offer it.
	resp, body = b.do(http.MethodGet, "/api/v1/auth/config", nil, nil)
	var ac sdk.AuthConfig
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &ac) != nil || ac.OIDC == nil || ac.WebLogin {
		t.Errorf("auth config without a public URL: %d %s; want oidc without web_login", resp.StatusCode, body)
	}
}

// An ID token whose nonce is not the sign-in's is refused: the person's
// browser went through an authorization request whose nonce was swapped
// (the code, its PKCE verifier and state are right), and nothing is made.
func TestConsoleSSOWrongNonce(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{web: true})
	r.op.AddUser("wendy", password, grpGPU)
	b := newBrowser(t, r.url, nil)
	resp, body := b.do(http.MethodGet, "/console/sso/start", nil, nil)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("start: %d %s", resp.StatusCode, body)
	}
	authURL := must(url.Parse(resp.Header.Get("Location")))
	q := authURL.Query()
	q.Set("nonce", "another-sign-ins-nonce")
	authURL.RawQuery = q.Encode()
	callback, err := r.op.Browse(testutil.Context(t, testutil.WaitMedium), authURL.String(), "wendy", password)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ = finishSignIn(t, b, callback)
	if msg := signInError(t, resp); !strings.Contains(msg, "nonce") {
		t.Errorf("an ID token with another nonce: %q; want it refused for its nonce", msg)
	}
	if b.cookie() != "" {
		t.Errorf("an ID token with another nonce set the console cookie")
	}
	if _, err := r.st.UserByName(context.Background(), "wendy"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an ID token with another nonce made the user: %v", err)
	}
	if r.audited("auth.refused", ssoActor, unverified) != 1 {
		t.Errorf("the refused sign-in is not audited as auth.refused")
	}
}

// The sign-in's state lasts 10 minutes by the server's clock, whatever
// the browser keeps: a callback within them signs in, one after them is
// refused.
func TestConsoleSSOStateExpires(t *testing.T) {
	t.Parallel()
	var ahead atomic.Int64
	r := newSSORig(t, ssoRigOpts{web: true, now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }})
	r.op.AddUser("wendy", password, grpGPU)
	r.op.AddUser("slow", password, grpGPU)

	b := newBrowser(t, r.url, nil)
	callback := r.startSignIn(b, "wendy")
	ahead.Store(int64(ssoStateTTL - 10*time.Second))
	if resp, location := finishSignIn(t, b, callback); location != "/#/" {
		t.Fatalf("a callback within the 10 minutes: %q", signInError(t, resp))
	}

	ahead.Store(0)
	b = newBrowser(t, r.url, nil)
	callback = r.startSignIn(b, "slow")
	ahead.Store(int64(ssoStateTTL + time.Second))
	resp, _ := finishSignIn(t, b, callback)
	if msg := signInError(t, resp); !strings.Contains(msg, "more than 10 minutes") {
		t.Errorf("a callback after 10 minutes: %q", msg)
	}
	if b.cookie() != "" {
		t.Errorf("a callback after 10 minutes set the console cookie")
	}
	if _, err := r.st.UserByName(context.Background(), "slow"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a callback after 10 minutes made the user: %v", err)
	}
}

// Over https the sign-in's state cookie is __Host- named with Path=/ (the
// prefix requires it), Secure and httpOnly; over http it is plain, under
// /console/sso. Each is read under its own scheme's name alone.
func TestConsoleSSOStateCookie(t *testing.T) {
	t.Parallel()
	for _, tls := range []bool{false, true} {
		r := newSSORig(t, ssoRigOpts{web: true, tls: tls})
		b := newBrowser(t, r.url, r.https)
		resp, body := b.do(http.MethodGet, "/console/sso/start", nil, nil)
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("tls=%v: start: %d %s", tls, resp.StatusCode, body)
		}
		name, path, other := ssoStateCookie, ssoStatePath, ssoStateCookieSecure
		if tls {
			name, path, other = ssoStateCookieSecure, "/", ssoStateCookie
		}
		c := cookieOf(resp, ssoStateCookie, ssoStateCookieSecure)
		if c == nil || c.Name != name || c.Path != path || c.Domain != "" || c.Secure != tls || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode {
			t.Fatalf("tls=%v: the state cookie %+v; want %s, Path=%s, Secure=%v, httpOnly, Lax", tls, c, name, path, tls)
		}
		state := must(url.Parse(resp.Header.Get("Location"))).Query().Get("state")
		callback := r.url + ssoCallbackPath + "?" + url.Values{"state": {state}, "code": {"not-a-code"}}.Encode()

		// Under the other scheme's name the state is not read.
		tossed := newBrowser(t, r.url, r.https)
		tossed.c.Jar.SetCookies(must(url.Parse(r.url+ssoStatePath)), []*http.Cookie{{Name: other, Value: c.Value, Path: "/"}})
		resp, _ = tossed.do(http.MethodGet, callback, nil, nil)
		if msg := signInError(t, resp); !strings.Contains(msg, "did not start in this browser") {
			t.Errorf("tls=%v: the state under %s: %q; want it not read", tls, other, msg)
		}
		// Under its own it is: the code is then what fails.
		resp, _ = b.do(http.MethodGet, callback, nil, nil)
		if msg := signInError(t, resp); !strings.Contains(msg, "authorization code") {
			t.Errorf("tls=%v: the state under %s: %q; want the provider's refusal of the code", tls, name, msg)
		}
		if cleared := cookieOf(resp, name); cleared == nil || cleared.MaxAge >= 0 || cleared.Path != path {
			t.Errorf("tls=%v: the callback does not clear the state cookie: %+v", tls, cleared)
		}
	}
}

// The callback counts against the address's login limit only once its
// state checked out: a page that makes its visitors' browsers fetch the
// callback (an <img>) locks nobody out, while real sign-ins count.
func TestConsoleSSOCallbackRateLimit(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{web: true, limited: true})
	frozen := time.Now()
	r.srv.authLimit.now = func() time.Time { return frozen }
	r.op.AddUser("wendy", password, grpGPU)
	r.op.AddUser("late", password, grpGPU)

	img := newBrowser(t, r.url, nil)
	for i := range authBurst + 5 {
		resp, body := img.do(http.MethodGet, ssoCallbackPath+"?state=x&code=y", nil, nil)
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("callback %d without this browser's state: %d %s; want the login page, not a limit", i, resp.StatusCode, body)
		}
		if msg := signInError(t, resp); !strings.Contains(msg, "did not start in this browser") {
			t.Fatalf("callback %d without this browser's state: %q", i, msg)
		}
	}
	b := newBrowser(t, r.url, nil)
	if resp, location := r.webSignIn(b, "wendy"); location != "/#/" {
		t.Fatalf("a sign-in after a flood of stateless callbacks: %q", signInError(t, resp))
	}
	// The sign-in counted: the rest of the burst, then the limit.
	guesser := newBrowser(t, r.url, nil)
	limited := false
	for range authBurst {
		if resp, _ := guesser.login("dgp_guess"); resp.StatusCode == http.StatusTooManyRequests {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatalf("%d token logins after the sign-in were not limited", authBurst)
	}
	late := newBrowser(t, r.url, nil)
	resp, _ := r.webSignIn(late, "late")
	if msg := signInError(t, resp); !strings.Contains(msg, "too many login attempts") {
		t.Errorf("a sign-in past the limit: %q", msg)
	}
	if late.cookie() != "" {
		t.Errorf("a sign-in past the limit set the console cookie")
	}
}

// The console's cookie makes no API tokens, directly or as a new user's
// first: whoever rides or steals a browser's login must not turn it into
// a credential that outlives it. The CLI's bearer token still does.
func TestConsoleCookieMakesNoTokens(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b := newBrowser(t, f.url, nil)
	b.mustLogin(f.admin)
	tokensOf := func(user string) int {
		t.Helper()
		code, body := f.call(f.admin, http.MethodGet, "/api/v1/tokens?user="+user, nil)
		var tokens []sdk.Token
		if code != http.StatusOK || json.Unmarshal(body, &tokens) != nil {
			t.Fatalf("list %s's tokens: %d %s", user, code, body)
		}
		return len(tokens)
	}
	before := tokensOf("root")

	resp, body := b.do(http.MethodPost, "/api/v1/tokens", sdk.TokenCreate{Name: "stolen"}, b.own())
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), "made with the CLI") {
		t.Errorf("a token made with the console's cookie: %d %s; want 403", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("an API error without X-Content-Type-Options: nosniff")
	}
	resp, body = b.do(http.MethodPost, "/api/v1/tokens", sdk.TokenCreate{Name: "for-dev", User: "dev"}, b.own())
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a token for another user made with the console's cookie: %d %s; want 403", resp.StatusCode, body)
	}
	resp, body = b.do(http.MethodPost, "/api/v1/users", sdk.UserCreate{Name: "sockpuppet"}, b.own())
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), "made with the CLI") {
		t.Errorf("a user (and its first token) made with the console's cookie: %d %s; want 403", resp.StatusCode, body)
	}
	if got := tokensOf("root"); got != before {
		t.Errorf("root has %d tokens, %d before the refused requests", got, before)
	}
	if _, err := f.srv.store.UserByName(context.Background(), "sockpuppet"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused request made the user: %v", err)
	}
	// Other changes by the cookie still go through; the CLI makes tokens.
	if resp, body := b.do(http.MethodPatch, "/api/v1/users/dev2", sdk.UserUpdate{Disabled: ptr(false)}, b.own()); resp.StatusCode != http.StatusOK {
		t.Errorf("a user update with the console's cookie: %d %s", resp.StatusCode, body)
	}
	code, body := f.call(f.admin, http.MethodPost, "/api/v1/tokens", sdk.TokenCreate{Name: "cli"})
	if code != http.StatusCreated {
		t.Errorf("a token made with the CLI's bearer token: %d %s", code, body)
	}
	resp, _ = b.do(http.MethodGet, "/api/v1/whoami", nil, nil)
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("an API answer without X-Content-Type-Options: nosniff")
	}
}

// With a public URL, the console's origin and its cookies' security are
// the public URL's, not the request's: behind a reverse proxy that ends
// TLS and passes the Host on, the console works over https (__Host-
// cookie, Secure), and a page at the server's own plain address is
// another origin.
func TestConsolePublicURLBehindProxy(t *testing.T) {
	t.Parallel()
	proxy := httptest.NewUnstartedServer(nil)
	public := listenerURL(proxy, true)
	f := newFixture(t, func(c *Config) { c.PublicURL = public })
	proxy.Config.Handler = httputil.NewSingleHostReverseProxy(must(url.Parse(f.url))) // keeps the Host
	proxy.StartTLS()
	t.Cleanup(proxy.Close)
	base := public.String()

	b := newBrowser(t, base, proxy.Client())
	resp, body := b.login(f.admin)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login through the proxy: %d %s", resp.StatusCode, body)
	}
	if ck := consoleCookieOf(t, resp); ck.Name != sdk.ConsoleCookieSecure || !ck.Secure || ck.Path != "/" {
		t.Errorf("the cookie behind a TLS proxy: %s Secure=%v Path=%q; want %s, Secure, /", ck.Name, ck.Secure, ck.Path, sdk.ConsoleCookieSecure)
	}
	change := func(origin string) (*http.Response, []byte) {
		return b.do(http.MethodPatch, "/api/v1/users/dev2", sdk.UserUpdate{Disabled: ptr(false)}, http.Header{"Origin": {origin}, sdk.CSRFHeader: {b.csrf}})
	}
	if resp, body := change(base); resp.StatusCode != http.StatusOK {
		t.Errorf("a change from the public URL's page: %d %s", resp.StatusCode, body)
	}
	if resp, body := change(f.url); resp.StatusCode != http.StatusForbidden || !strings.Contains(problemDetail(body), "open the console at "+base) {
		t.Errorf("a change from the server's plain address: %d %s; want 403 naming the public URL", resp.StatusCode, body)
	}
	// A login from a page at the plain address is another site's.
	direct := newBrowser(t, f.url, nil)
	resp, body = direct.do(http.MethodPost, "/api/v1/console/login", sdk.ConsoleLogin{Token: f.dev}, http.Header{"Origin": {f.url}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a login from the plain address's page: %d %s; want 403", resp.StatusCode, body)
	}

	// WebSockets through the proxy: from the public URL's page only.
	ctx := testutil.Context(t, testutil.WaitLong)
	sess, err := must(sdk.NewClient(f.url, f.admin)).CreateSession(ctx, sdk.CreateSessionRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := strings.Replace(base, "https://", "wss://", 1) + "/api/v1/sessions/" + sess.ID + "/connect"
	cookie := sdk.ConsoleCookieSecure + "=" + b.cookie()
	for _, c := range []struct {
		origin string
		ok     bool
	}{{f.url, false}, {base, true}} {
		conn, resp, err := websocket.Dial(ctx, endpoint, &websocket.DialOptions{HTTPClient: proxy.Client(),
			HTTPHeader: http.Header{"Cookie": {cookie}, "Origin": {c.origin}}})
		if err == nil {
			conn.Close(websocket.StatusNormalClosure, "")
		}
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		if (err == nil) != c.ok || (!c.ok && status != http.StatusForbidden) {
			t.Errorf("a WebSocket through the proxy from %s: %d %v; want ok=%v", c.origin, status, err, c.ok)
		}
	}
}
