package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

// standIn is a stand-in devgpu API for the CLI's single sign-on: it
// answers /auth/config with a real provider, verifies the ID tokens the
// CLI hands it against that provider (signature, audience, nonce), and
// mints, renews and ends credentials.
type standIn struct {
	*httptest.Server
	op *oidcop.OP // nil: no single sign-on

	mu        sync.Mutex
	logins    []sdk.OIDCLogin
	tokens    map[string]string // devgpu token -> user
	refreshes map[string]string // refresh token -> user
	n         int
	ttl       time.Duration
	// refuseRefresh, when set, is the sentence /auth/refresh answers
	// with 401.
	refuseRefresh string
	loggedOut     []string
	renewals      int
	// bodies are the raw /auth/oidc requests; sent the refresh tokens
	// /auth/refresh was given.
	bodies []string
	sent   []string
}

func newStandIn(t *testing.T, op *oidcop.OP) *standIn {
	s := &standIn{op: op, tokens: map[string]string{}, refreshes: map[string]string{}, ttl: 8 * time.Hour}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/auth/config", func(w http.ResponseWriter, r *http.Request) {
		var ac sdk.AuthConfig
		if op != nil {
			ac.OIDC = &sdk.OIDCProvider{Issuer: op.Issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes}
		}
		writeJSON(w, ac)
	})
	mux.HandleFunc("POST /api/v1/auth/oidc", func(w http.ResponseWriter, r *http.Request) {
		var req sdk.OIDCLogin
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies = append(s.bodies, string(body))
		s.mu.Unlock()
		if err := json.Unmarshal(body, &req); err != nil {
			problem(w, http.StatusBadRequest, err.Error())
			return
		}
		p, err := oidc.NewProvider(r.Context(), op.Issuer)
		if err != nil {
			problem(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		id, err := p.Verifier(&oidc.Config{ClientID: oidcop.CLIClientID}).Verify(r.Context(), req.IDToken)
		if err != nil {
			problem(w, http.StatusUnauthorized, err.Error())
			return
		}
		if req.Flow == sdk.FlowBrowser && (req.Nonce == "" || id.Nonce != req.Nonce) {
			problem(w, http.StatusUnauthorized, "the nonce does not match")
			return
		}
		if req.RefreshToken == "" {
			problem(w, http.StatusBadRequest, "no refresh token")
			return
		}
		var claims struct {
			Name string `json:"preferred_username"`
		}
		_ = id.Claims(&claims)
		s.mu.Lock()
		s.logins = append(s.logins, req)
		cr := s.mint(claims.Name)
		s.mu.Unlock()
		writeJSON(w, cr)
	})
	mux.HandleFunc("POST /api/v1/auth/refresh", func(w http.ResponseWriter, r *http.Request) {
		var req sdk.RefreshRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.sent = append(s.sent, req.RefreshToken)
		user, ok := s.refreshes[req.RefreshToken]
		switch {
		case s.refuseRefresh != "":
			problem(w, http.StatusUnauthorized, s.refuseRefresh)
			return
		case !ok:
			problem(w, http.StatusUnauthorized, "unknown refresh token")
			return
		}
		delete(s.refreshes, req.RefreshToken)
		s.renewals++
		writeJSON(w, s.mint(user))
	})
	mux.HandleFunc("GET /api/v1/whoami", func(w http.ResponseWriter, r *http.Request) {
		user, ok := s.user(r)
		if !ok {
			problem(w, http.StatusUnauthorized, "your credential has expired")
			return
		}
		writeJSON(w, sdk.Whoami{User: user, Auth: sdk.AuthSSO})
	})
	mux.HandleFunc("POST /api/v1/auth/logout", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		s.loggedOut = append(s.loggedOut, token)
		delete(s.tokens, token)
		w.WriteHeader(http.StatusNoContent)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// mint makes a credential for user; s.mu is held.
func (s *standIn) mint(user string) sdk.Credential {
	s.n++
	cr := sdk.Credential{User: user, Token: fmt.Sprintf("tok-%d", s.n), RefreshToken: fmt.Sprintf("ref-%d", s.n), ExpiresAt: time.Now().Add(s.ttl).UTC()}
	s.tokens[cr.Token] = user
	s.refreshes[cr.RefreshToken] = user
	return cr
}

func (s *standIn) user(r *http.Request) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	return u, ok
}

// given is what /auth/oidc was given, and which tokens /auth/logout ended.
// noAccessToken fails t when the CLI handed the server the provider's
// access token, which the server has no use for.
func (s *standIn) noAccessToken(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.bodies {
		var raw map[string]any
		if err := json.Unmarshal([]byte(b), &raw); err != nil {
			t.Fatal(err)
		}
		if _, ok := raw["access_token"]; ok {
			t.Errorf("the server was given the provider's access token: %s", b)
		}
	}
}

func (s *standIn) given() ([]sdk.OIDCLogin, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sdk.OIDCLogin(nil), s.logins...), append([]string(nil), s.loggedOut...)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(sdk.Problem{Status: status, Title: http.StatusText(status), Detail: detail})
}

// useConfig points the CLI's config at a new file.
func useConfig(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "devgpu", "config.json")
	t.Setenv("DEVGPU_CONFIG", path)
	t.Setenv("DEVGPU_URL", "")
	t.Setenv("DEVGPU_TOKEN", "")
	t.Setenv("DEVGPU_CA_FILE", "")
	return path
}

// lines is a writer whose lines a test waits on.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan string
}

func newLines() *lines { return &lines{ch: make(chan string, 100)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if line != "" {
			l.ch <- strings.TrimSpace(line)
		}
	}
	return len(p), nil
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait returns the first submatch of re in the next lines.
func (l *lines) wait(t *testing.T, ctx context.Context, re *regexp.Regexp) string {
	t.Helper()
	for {
		select {
		case line := <-l.ch:
			if m := re.FindStringSubmatch(line); m != nil {
				return m[1]
			}
		case <-ctx.Done():
			t.Errorf("no line matching %s in %q", re, l.String())
			return ""
		}
	}
}

func noEnv(string) string { return "" }

func TestSSOBrowserLogin(t *testing.T) {
	op := oidcop.Start(t, oidcop.Options{})
	op.AddUser("alice", "pw", "ml-devs")
	// 127.0.0.1 for most providers; localhost for Entra ID.
	for _, host := range []string{"", "localhost"} {
		t.Run("host="+cmp.Or(host, "default"), func(t *testing.T) {
			testBrowserLogin(t, op, host)
		})
	}
}

func testBrowserLogin(t *testing.T, op *oidcop.OP, host string) {
	path := useConfig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	api := newStandIn(t, op)
	client, err := sdk.NewClient(api.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	ac, err := client.AuthConfig(ctx)
	if err != nil || ac.OIDC == nil {
		t.Fatalf("auth config: %+v, %v", ac, err)
	}
	wantHost := host
	if wantHost == "" {
		wantHost = "127.0.0.1"
	}

	// The "browser": follows the URL the CLI gives through the
	// provider's login form, then back to the CLI's loopback listener.
	page := make(chan string, 1)
	browse := func(authURL string) error {
		go func() {
			redirect, err := op.Browse(ctx, authURL, "alice", "pw")
			if err != nil {
				page <- "browse: " + err.Error()
				return
			}
			if redirect.Hostname() != wantHost || redirect.Path != "/callback" {
				page <- "redirected to " + redirect.String()
				return
			}
			resp, err := http.Get(redirect.String())
			if err != nil {
				page <- "callback: " + err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page <- string(b)
		}()
		return nil
	}
	stderr := newLines()
	l := &oidcLogin{provider: *ac.OIDC, http: &http.Client{Timeout: testutil.WaitMedium}, stderr: stderr, open: browse, getenv: noEnv, loopbackHost: host}
	if err := loginSSO(ctx, client, l, config{}, ""); err != nil {
		t.Fatalf("login: %v\n%s\n%s", err, stderr, <-page)
	}
	if got := <-page; !strings.Contains(got, "You are logged in to devgpu") {
		t.Errorf("the browser shows %q", got)
	}
	if !strings.Contains(stderr.String(), "Opening your browser to log in; if it does not open, visit:\n  "+op.Issuer) {
		t.Errorf("stderr: %q", stderr)
	}
	if logins, _ := api.given(); len(logins) != 1 || logins[0].Flow != sdk.FlowBrowser || logins[0].Nonce == "" || logins[0].RefreshToken == "" {
		t.Fatalf("the server was given %+v", logins)
	}
	api.noAccessToken(t)
	checkCached(t, path, api.URL, "alice")
}

func TestLoopbackHost(t *testing.T) {
	t.Parallel()
	for issuer, want := range map[string]string{
		"https://login.microsoftonline.com/TENANT/v2.0": "localhost",
		"https://login.microsoftonline.us/TENANT/v2.0":  "localhost",
		"https://sts.windows.net/TENANT/":               "localhost",
		"https://keycloak.example.com/realms/acme":      "127.0.0.1",
		"http://127.0.0.1:5556":                         "127.0.0.1",
	} {
		if got := loopbackHost(issuer); got != want {
			t.Errorf("loopbackHost(%s) = %s, want %s", issuer, got, want)
		}
	}
}

// checkCached checks that the config holds url's single sign-on as the
// current one, readable by its owner only.
func checkCached(t *testing.T, path, url, user string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v, want 0600", fi.Mode().Perm())
	}
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	cr := c.current()
	if c.URL != url || cr.Method != methodSSO || cr.User != user || cr.RefreshToken == "" || cr.ExpiresAt == nil || c.Token != cr.Token {
		t.Errorf("config %+v, credential %+v", c, cr)
	}
}

// Over SSH without a display, login uses the device grant.
func TestSSODeviceLoginOverSSH(t *testing.T) {
	path := useConfig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	op := oidcop.Start(t, oidcop.Options{})
	op.AddUser("bob", "pw", "ml-devs")
	api := newStandIn(t, op)
	client, _ := sdk.NewClient(api.URL, "")
	ac, err := client.AuthConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stderr := newLines()
	ssh := func(k string) string {
		if k == "SSH_CONNECTION" {
			return "10.0.0.1 5555 10.0.0.2 22"
		}
		return ""
	}
	opened := false
	l := &oidcLogin{provider: *ac.OIDC, http: &http.Client{Timeout: testutil.WaitMedium}, stderr: stderr,
		open: func(string) error { opened = true; return nil }, getenv: ssh}
	approved := make(chan error, 1)
	go func() {
		code := stderr.wait(t, ctx, regexp.MustCompile(`^To log in, open \S+ and enter the code (\S+)$`))
		approved <- op.ApproveDevice(ctx, code, "bob", "pw")
	}()
	if err := loginSSO(ctx, client, l, config{}, ""); err != nil {
		t.Fatalf("login: %v\n%s", err, stderr)
	}
	if err := <-approved; err != nil {
		t.Fatal(err)
	}
	if opened {
		t.Error("the device flow opened a browser")
	}
	if logins, _ := api.given(); len(logins) != 1 || logins[0].Flow != sdk.FlowDevice || logins[0].Nonce != "" {
		t.Fatalf("the server was given %+v", logins)
	}
	api.noAccessToken(t)
	checkCached(t, path, api.URL, "bob")
}

func TestSSOLoginFailures(t *testing.T) {
	useConfig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	op := oidcop.Start(t, oidcop.Options{})
	op.AddUser("carol", "pw")
	api := newStandIn(t, op)
	client, _ := sdk.NewClient(api.URL, "")
	provider := sdk.OIDCProvider{Issuer: op.Issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes}

	t.Run("device denied", func(t *testing.T) {
		stderr := newLines()
		l := &oidcLogin{provider: provider, http: http.DefaultClient, stderr: stderr, device: true, getenv: noEnv}
		go func() {
			code := stderr.wait(t, ctx, regexp.MustCompile(`enter the code (\S+)$`))
			_ = op.DenyDevice(ctx, code, "carol", "pw")
		}()
		err := loginSSO(ctx, client, l, config{}, "")
		if err == nil || !strings.Contains(err.Error(), "the login was declined at the identity provider") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("browser never comes back", func(t *testing.T) {
		l := &oidcLogin{provider: provider, http: http.DefaultClient, stderr: io.Discard, noBrowser: true, getenv: noEnv, timeout: 50 * time.Millisecond}
		err := loginSSO(ctx, client, l, config{}, "")
		if err == nil || !strings.Contains(err.Error(), "the browser did not come back from the identity provider within 50ms") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("provider unreachable", func(t *testing.T) {
		stopped := oidcop.Start(t, oidcop.Options{})
		stopped.Stop()
		p := provider
		p.Issuer = stopped.Issuer
		l := &oidcLogin{provider: p, http: http.DefaultClient, stderr: io.Discard, device: true, getenv: noEnv}
		err := loginSSO(ctx, client, l, config{}, "")
		if err == nil || !strings.Contains(err.Error(), "the identity provider at "+stopped.Issuer+" cannot be reached") ||
			!strings.Contains(err.Error(), "check your network or VPN") {
			t.Fatalf("got %v", err)
		}
	})
	if logins, _ := api.given(); len(logins) != 0 {
		t.Errorf("the server was given %+v", logins)
	}
}

// A single sign-on near its expiry is renewed silently, and so is one the
// server refuses; one the server will not renew says how to log in again.
func TestSSOSilentRefresh(t *testing.T) {
	path := useConfig(t)
	api := newStandIn(t, nil)
	login := func(expiresIn time.Duration) credential {
		api.mu.Lock()
		cr := api.mint("dana")
		api.mu.Unlock()
		exp := time.Now().Add(expiresIn)
		c := credential{Method: methodSSO, Token: cr.Token, User: "dana", ExpiresAt: &exp, RefreshToken: cr.RefreshToken, Flow: sdk.FlowDevice}
		if _, err := saveLogin(config{}, api.URL, c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	whoami := func() (string, error) {
		client, _, err := newClient()
		if err != nil {
			return "", err
		}
		me, err := client.Whoami(context.Background())
		return me.User, err
	}

	t.Run("near expiry", func(t *testing.T) {
		old := login(5 * time.Minute)
		if u, err := whoami(); err != nil || u != "dana" {
			t.Fatalf("whoami: %q, %v", u, err)
		}
		c, _ := loadConfig()
		cr := c.current()
		if cr.RefreshToken == old.RefreshToken || cr.Token == old.Token || cr.ExpiresAt.Before(time.Now().Add(time.Hour)) {
			t.Errorf("not renewed: %+v", cr)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("config after renewal: %v, %v", fi, err)
		}
	})
	t.Run("many at once", func(t *testing.T) {
		login(time.Minute)
		api.mu.Lock()
		before := api.renewals
		api.mu.Unlock()
		errs := make(chan error, 4)
		for range cap(errs) {
			go func() { _, err := whoami(); errs <- err }()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		api.mu.Lock()
		defer api.mu.Unlock()
		if api.renewals != before+1 {
			t.Errorf("%d renewals, want one", api.renewals-before)
		}
	})
	t.Run("refused by the server", func(t *testing.T) {
		old := login(time.Hour)
		api.mu.Lock()
		delete(api.tokens, old.Token) // the server's view: expired
		api.mu.Unlock()
		if u, err := whoami(); err != nil || u != "dana" {
			t.Fatalf("whoami: %q, %v", u, err)
		}
		if c, _ := loadConfig(); c.current().RefreshToken == old.RefreshToken {
			t.Error("the renewed credential was not saved")
		}
	})
	t.Run("ended", func(t *testing.T) {
		login(time.Minute)
		api.mu.Lock()
		api.refuseRefresh = "your account was disabled in devgpu."
		api.mu.Unlock()
		t.Cleanup(func() { api.mu.Lock(); api.refuseRefresh = ""; api.mu.Unlock() })
		_, err := whoami()
		want := fmt.Sprintf("your single sign-on to %s has ended (your account was disabled in devgpu); run `devgpu login %s`", api.URL, api.URL)
		if err == nil || err.Error() != want {
			t.Fatalf("got %v, want %s", err, want)
		}
		// The same when the server ends it before it expires: its 401
		// is explained by the refused renewal.
		old := login(time.Hour)
		api.mu.Lock()
		delete(api.tokens, old.Token)
		api.mu.Unlock()
		if _, err = whoami(); err == nil || err.Error() != want {
			t.Fatalf("ended early: got %v, want %s", err, want)
		}
	})
}

// Credentials are kept per server, the last login being the current one;
// older configs with a top-level token still work.
func TestCredentialsPerServer(t *testing.T) {
	path := useConfig(t)
	exp := time.Now().Add(time.Hour).UTC().Round(time.Second)
	a := credential{Method: methodSSO, Token: "tok-a", User: "alice", ExpiresAt: &exp, RefreshToken: "ref-a", Flow: sdk.FlowBrowser}
	if _, err := saveLogin(config{}, "https://a.example.com", a); err != nil {
		t.Fatal(err)
	}
	f, _, _ := readConfigFile()
	if _, err := saveLogin(f, "https://b.example.com", credential{Method: methodToken, Token: "tok-b", User: "alice"}); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "https://b.example.com" || c.Token != "tok-b" || c.current().Method != methodToken {
		t.Errorf("current: %+v", c)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	b, _ := os.ReadFile(path)
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil || raw["token"] != "tok-b" {
		t.Errorf("older CLIs read the top-level token: %s", b)
	}

	// DEVGPU_URL picks that server's credential.
	t.Setenv("DEVGPU_URL", "https://a.example.com/")
	c, _ = loadConfig()
	if c.Token != "tok-a" || c.current().RefreshToken != "ref-a" || !c.current().ExpiresAt.Equal(exp) {
		t.Errorf("with DEVGPU_URL: %+v %+v", c, c.current())
	}
	// DEVGPU_TOKEN is an API token whatever is saved.
	t.Setenv("DEVGPU_TOKEN", "env-token")
	c, _ = loadConfig()
	if c.Token != "env-token" || c.current().Method != methodToken {
		t.Errorf("with DEVGPU_TOKEN: %+v", c.current())
	}
	t.Setenv("DEVGPU_URL", "")
	t.Setenv("DEVGPU_TOKEN", "")

	// Forgetting one server keeps the other.
	if err := saveCredential("https://b.example.com", nil); err != nil {
		t.Fatal(err)
	}
	f, _, _ = readConfigFile()
	if f.Token != "" || len(f.Credentials) != 1 || f.Credentials["https://a.example.com"].Token != "tok-a" {
		t.Errorf("after forgetting b: %+v", f)
	}

	// An older config: a top-level URL and token only.
	if err := os.WriteFile(path, []byte(`{"url":"http://127.0.0.1:8470","token":"legacy"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ = loadConfig()
	if c.Token != "legacy" || c.current().Method != methodToken {
		t.Errorf("older config: %+v", c)
	}
	// A top-level token changed by hand wins over the saved credential.
	if err := os.WriteFile(path, []byte(`{"url":"https://a.example.com","token":"by-hand","credentials":{"https://a.example.com":{"method":"sso","token":"tok-a","refresh_token":"ref-a"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ = loadConfig()
	if c.Token != "by-hand" || c.current().Method != methodToken {
		t.Errorf("hand-edited token: %+v", c.current())
	}
}

func TestLogout(t *testing.T) {
	useConfig(t)
	api := newStandIn(t, nil)
	api.mu.Lock()
	cr := api.mint("erin")
	api.mu.Unlock()
	exp := cr.ExpiresAt
	if _, err := saveLogin(config{}, "https://other.example.com", credential{Method: methodToken, Token: "keep"}); err != nil {
		t.Fatal(err)
	}
	f, _, _ := readConfigFile()
	if _, err := saveLogin(f, api.URL, credential{Method: methodSSO, Token: cr.Token, RefreshToken: cr.RefreshToken, ExpiresAt: &exp}); err != nil {
		t.Fatal(err)
	}
	cmd := newLogoutCmd()
	cmd.SetArgs([]string{})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if _, out := api.given(); len(out) != 1 || out[0] != cr.Token {
		t.Errorf("the server ended %v", out)
	}
	f, _, _ = readConfigFile()
	if f.Token != "" || len(f.Credentials) != 1 || f.Credentials["https://other.example.com"].Token != "keep" {
		t.Errorf("after logout: %+v", f)
	}

	// An unreachable server: the credential goes anyway.
	dead := credential{Method: methodSSO, Token: "t", RefreshToken: "r", ExpiresAt: &exp}
	if _, err := saveLogin(f, "http://127.0.0.1:1", dead); err != nil {
		t.Fatal(err)
	}
	cmd = newLogoutCmd()
	cmd.SetArgs([]string{"http://127.0.0.1:1"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if f, _, _ = readConfigFile(); len(f.Credentials) != 1 {
		t.Errorf("after logout of an unreachable server: %+v", f)
	}
}

func TestPrintWhoami(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	exp := now.Add(8 * time.Hour)
	var b bytes.Buffer
	printWhoami(&b, whoamiOutput{
		Whoami: sdk.Whoami{User: "alice", Auth: sdk.AuthSSO, Groups: []string{"ml-devs", "ml-admins"}, ExpiresAt: &exp,
			Projects: []sdk.WhoamiProject{{Name: "ml", Role: "admin", Source: "group"}, {Name: "infra", Role: "developer"}}},
		Server: "https://devgpu.example.com", Flow: sdk.FlowBrowser,
	}, now)
	for _, want := range []string{
		"user:      alice\n", "server:    https://devgpu.example.com\n",
		"login:     single sign-on (browser); groups: ml-devs, ml-admins\n",
		"org role:  member\n", "projects:  ml (admin, from group)\n", "           infra (developer)\n",
		"(in 8h0m0s), renewed automatically\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
	b.Reset()
	printWhoami(&b, whoamiOutput{Whoami: sdk.Whoami{User: "ci", Auth: sdk.AuthToken, ServiceAccount: true}, Server: "https://x"}, now)
	for _, want := range []string{"login:     API token\n", "org role:  member, service account\n", "projects:  none\n", "expires:   never"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
}

// login --token keeps working, and saves an API token for that server.
func TestLoginToken(t *testing.T) {
	useConfig(t)
	api := newStandIn(t, nil)
	api.mu.Lock()
	api.tokens["api-token"] = "frank"
	api.mu.Unlock()
	cmd := newLoginCmd()
	cmd.SetArgs([]string{api.URL, "--token", "api-token"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	c, _ := loadConfig()
	if cr := c.current(); c.URL != api.URL || cr.Method != methodToken || cr.Token != "api-token" || cr.User != "frank" {
		t.Errorf("after login --token: %+v", cr)
	}
	// A server without single sign-on refuses --device in one sentence.
	cmd = newLoginCmd()
	cmd.SetArgs([]string{api.URL, "--device"})
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "has no single sign-on; log in with an API token") {
		t.Errorf("login --device without single sign-on: %v", err)
	}
}
