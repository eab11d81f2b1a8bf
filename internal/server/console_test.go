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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

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

// cookie is the console cookie the jar holds ("" when none).
func (b *browser) cookie() string {
	u := must(url.Parse(b.base))
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == sdk.ConsoleCookie {
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

// consoleCookieOf is the console cookie a response sets.
func consoleCookieOf(t *testing.T, resp *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range resp.Cookies() {
		if c.Name == sdk.ConsoleCookie {
			return c
		}
	}
	t.Fatalf("the response sets no %s cookie (Set-Cookie %q)", sdk.ConsoleCookie, resp.Header.Values("Set-Cookie"))
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
	}{{"http", f.url, nil, false}, {"https", tls.URL, tls.Client(), true}} {
		b := newBrowser(t, c.base, c.client)
		before := time.Now()
		resp, body := b.login(f.dev)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: login: %d %s", c.name, resp.StatusCode, body)
		}
		ck := consoleCookieOf(t, resp)
		if !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" || ck.Secure != c.secure {
			t.Errorf("%s: cookie HttpOnly=%v SameSite=%v Path=%q Secure=%v; want httpOnly, Lax, /, Secure=%v",
				c.name, ck.HttpOnly, ck.SameSite, ck.Path, ck.Secure, c.secure)
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
// response and where it sends the browser.
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

// signInError is the sentence a redirect to the login page carries.
func signInError(t *testing.T, location string) string {
	t.Helper()
	route, ok := strings.CutPrefix(location, "/#/login?")
	if !ok {
		t.Fatalf("the sign-in went to %q, not the login page", location)
	}
	q, err := url.ParseQuery(route)
	if err != nil {
		t.Fatal(err)
	}
	return q.Get("error")
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
		t.Fatalf("the sign-in went to %q (%q), not the console", location, signInError(t, location))
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
		_, location := finishSignIn(t, b, callback)
		if msg := signInError(t, location); !strings.Contains(msg, "did not start in this browser") {
			t.Errorf("%s: the sign-in went to %q", c.name, location)
		}
		if b.cookie() != "" {
			t.Errorf("%s: a refused callback set the console cookie", c.name)
		}
	}
	if _, err := r.st.UserByName(context.Background(), "mallory"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused callback made the user: %v", err)
	}

	b := newBrowser(t, r.url, nil)
	_, location := r.webSignIn(b, "nobody")
	if msg := signInError(t, location); !strings.Contains(msg, "none of the groups") || strings.Contains(msg, "devgpu login") {
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
