package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

func TestSecureURL(t *testing.T) {
	t.Parallel()
	for u, want := range map[string]bool{
		"https://login.example.com/tenant":     true,
		"HTTPS://login.example.com":            true,
		"http://127.0.0.1:5556/":               true,
		"http://[::1]:8080/x":                  true,
		"http://localhost:8470":                true,
		"http://login.example.com/tenant":      false,
		"http://127.0.0.1.evil.example.com/":   false,
		"javascript:alert(1)":                  false,
		"file:///etc/passwd":                   false,
		"https://user:pw@login.example.com/":   false,
		"https:///no-host":                     false,
		"ms-settings:privacy":                  false,
		"\\\\attacker\\share\\x.exe":           false,
		"https://login.example.com/a b --flag": true, // one argument when opened
	} {
		if got := secureURL(u); got != want {
			t.Errorf("secureURL(%q) = %v, want %v", u, got, want)
		}
	}
}

// Single sign-on to a server reached without TLS is refused before the
// provider is asked anything.
func TestSSOLoginRefusesInsecureServer(t *testing.T) {
	useConfig(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	client, err := sdk.NewClient("http://devgpu.example.com:8470/", "")
	if err != nil {
		t.Fatal(err)
	}
	l := &oidcLogin{
		provider: sdk.OIDCProvider{Issuer: "https://login.example.com", ClientID: "devgpu"},
		http:     &http.Client{Transport: refuseTransport{t}}, stderr: io.Discard, device: true, getenv: noEnv,
	}
	err = loginSSO(ctx, client, l, config{}, "")
	want := "single sign-on needs an https server URL (or http on loopback); log in to https://devgpu.example.com:8470"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

// refuseTransport fails the test when anything is asked over the network.
type refuseTransport struct{ t *testing.T }

func (r refuseTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.t.Errorf("the CLI asked %s", req.URL)
	return nil, errors.New("refused by the test")
}

// fakeDiscovery serves a discovery document on loopback whose issuer is
// itself (as go-oidc checks) and whose other endpoints doc sets: a
// provider, or a server, that sends the CLI elsewhere. A hand-written
// provider, since a real one cannot be made to misbehave like this.
func fakeDiscovery(t *testing.T, doc map[string]string, device map[string]any) *httptest.Server {
	var srv *httptest.Server
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		d := map[string]string{
			"issuer": srv.URL, "authorization_endpoint": srv.URL + "/authorize", "token_endpoint": srv.URL + "/token",
			"jwks_uri": srv.URL + "/keys", "device_authorization_endpoint": srv.URL + "/device",
		}
		for k, v := range doc {
			d[k] = v
		}
		writeJSON(w, d)
	})
	mux.HandleFunc("POST /device", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, device)
	})
	srv = httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// The CLI follows, opens or prints no provider URL that is not https (or
// http on loopback), whatever the server or the provider says.
func TestSSORefusesInsecureProviderURLs(t *testing.T) {
	useConfig(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	api := newStandIn(t, nil) // on loopback: not what is refused here
	client, _ := sdk.NewClient(api.URL, "")
	login := func(t *testing.T, issuer string, device bool, hc *http.Client) (error, string) {
		t.Helper()
		stderr := newLines()
		l := &oidcLogin{
			provider: sdk.OIDCProvider{Issuer: issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes},
			http:     hc, stderr: stderr, device: device, getenv: noEnv, timeout: testutil.WaitShort,
			open: func(u string) error {
				t.Errorf("the CLI opened %s", u)
				return nil
			},
		}
		err := loginSSO(ctx, client, l, config{}, "")
		return err, stderr.String()
	}

	t.Run("issuer", func(t *testing.T) {
		err, _ := login(t, "http://login.example.com/tenant", false, &http.Client{Transport: refuseTransport{t}})
		if err == nil || !strings.HasPrefix(err.Error(), `the identity provider's issuer "http://login.example.com/tenant" is not an https URL`) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("authorization endpoint", func(t *testing.T) {
		idp := fakeDiscovery(t, map[string]string{"authorization_endpoint": "http://login.example.com/authorize"}, nil)
		err, stderr := login(t, idp.URL, false, http.DefaultClient)
		if err == nil || !strings.HasPrefix(err.Error(), `the identity provider's authorization endpoint "http://login.example.com/authorize" is not an https URL`) {
			t.Fatalf("got %v", err)
		}
		if strings.Contains(stderr, "login.example.com") {
			t.Errorf("the CLI printed the link: %q", stderr)
		}
	})
	for name, uri := range map[string]string{
		"verification uri":          "http://login.example.com/device",
		"verification uri complete": "javascript:alert(1)",
	} {
		t.Run(name, func(t *testing.T) {
			da := map[string]any{"device_code": "dc", "user_code": "UC-1", "verification_uri": "https://login.example.com/device", "expires_in": 60, "interval": 1}
			if name == "verification uri" {
				da["verification_uri"] = uri
			} else {
				da["verification_uri_complete"] = uri
			}
			idp := fakeDiscovery(t, nil, da)
			err, stderr := login(t, idp.URL, true, http.DefaultClient)
			if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("the identity provider's device verification URI %q is not an https URL", uri)) {
				t.Fatalf("got %v", err)
			}
			if strings.Contains(stderr, "UC-1") {
				t.Errorf("the CLI printed the code: %q", stderr)
			}
		})
	}
	if logins, _ := api.given(); len(logins) != 0 {
		t.Errorf("the server was given %+v", logins)
	}
}

// The URL is always one argument of the browser's command, whatever
// $BROWSER and the URL hold; nothing but https (or http on loopback) is
// opened.
func TestBrowserCommand(t *testing.T) {
	t.Parallel()
	const u = "https://login.example.com/authorize?a=b c;--remote-debugging-port=1"
	for _, tc := range []struct {
		browser, goos string
		want          []string
	}{
		{"firefox --new-tab %s", "linux", []string{"firefox", "--new-tab", u}},
		{"w3m", "linux", []string{"w3m", u}},
		{"chrome --app=%s:lynx", "linux", []string{"chrome", "--app=" + u}},
		{"", "linux", []string{"xdg-open", u}},
		{"", "darwin", []string{"open", u}},
		{"", "windows", []string{"rundll32", "url.dll,FileProtocolHandler", u}},
	} {
		got, err := browserCommand(tc.browser, tc.goos, u)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("browserCommand(%q, %s) = %q, %v; want %q", tc.browser, tc.goos, got, err, tc.want)
		}
	}
	for _, bad := range []string{"file:///c:/windows/system32/calc.exe", "http://login.example.com/", `\\attacker\share\x.exe`} {
		if got, err := browserCommand("", "windows", bad); err == nil {
			t.Errorf("opened %q with %q", bad, got)
		}
	}
	if got, err := browserCommand("%s", "linux", u); err == nil {
		t.Errorf("$BROWSER=%%s ran %q", got)
	}
}

// The config (tokens, refresh secrets) is written to a new private file
// that replaces it: not through a file or link left at a fixed name, and
// not into a directory others can write to.
func TestConfigWrite(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("mode bits")
	}
	path := useConfig(t)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A world-readable file left at the name an older devgpu wrote
	// through first.
	if err := os.WriteFile(path+".tmp", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	save := func() {
		t.Helper()
		if _, err := saveLogin(config{}, "https://a.example.com", credential{Method: methodSSO, Token: "secret", RefreshToken: "refresh-secret"}); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode() != 0o600 {
			t.Fatalf("config: %v, %v", fi, err)
		}
	}
	save()
	if b, _ := os.ReadFile(path + ".tmp"); len(b) != 0 {
		t.Errorf("written through the leftover file: %s", b)
	}
	// A link there.
	os.Remove(path + ".tmp")
	stolen := filepath.Join(t.TempDir(), "stolen")
	if err := os.Symlink(stolen, path+".tmp"); err != nil {
		t.Fatal(err)
	}
	save()
	if _, err := os.Stat(stolen); err == nil {
		t.Error("written through the link")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".config-") {
			t.Errorf("left %s behind", e.Name())
		}
	}

	// A fresh directory is private.
	fresh := filepath.Join(t.TempDir(), "new", "devgpu", "config.json")
	t.Setenv("DEVGPU_CONFIG", fresh)
	if _, err := saveConfig(config{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Dir(fresh)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("config directory: %v, %v", fi, err)
	}

	// One others can write to is refused.
	if err := os.Chmod(filepath.Dir(fresh), 0o770); err != nil {
		t.Fatal(err)
	}
	_, err := saveConfig(config{})
	want := fmt.Sprintf("the config directory %s can be written by other users (mode 0770), who could replace your credentials; run `chmod go-w %s`", filepath.Dir(fresh), filepath.Dir(fresh))
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got %v, want %s", err, want)
	}
}

// The renewal lock is the system's file lock: a lock file left behind
// (by a devgpu that crashed) holds no one up, and a held lock is never
// broken, however long its holder takes.
func TestConfigLock(t *testing.T) {
	path := useConfig(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".lock", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockConfig(ctx, testutil.WaitShort)
	if err != nil {
		t.Fatalf("a lock file nobody holds: %v", err)
	}
	// A slow holder: its lock looks old.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path+".lock", old, old); err != nil {
		t.Fatal(err)
	}
	if u2, err := lockConfig(ctx, 300*time.Millisecond); err == nil {
		u2()
		t.Fatal("a second devgpu took the held lock")
	} else if !strings.Contains(err.Error(), "another devgpu held the lock on "+path+".lock for too long") {
		t.Errorf("got %v", err)
	}
	unlock()
	unlock, err = lockConfig(ctx, testutil.WaitShort)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	unlock()
}

// A devgpu that dies holding the lock releases it.
func TestConfigLockHolderDies(t *testing.T) {
	if os.Getenv("DEVGPU_TEST_LOCK_HOLDER") == "1" {
		if _, err := lockConfig(context.Background(), testutil.WaitShort); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin) // hold until killed
		os.Exit(0)
	}
	useConfig(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestConfigLockHolderDies$")
	cmd.Env = append(os.Environ(), "DEVGPU_TEST_LOCK_HOLDER=1")
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "locked" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the holder said %q", line)
	}
	if u, err := lockConfig(ctx, 200*time.Millisecond); err == nil {
		u()
		t.Fatal("took the lock another process holds")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	unlock, err := lockConfig(ctx, testutil.WaitShort)
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	unlock()
}

// A devgpu whose credential another devgpu renewed (or logged out of)
// since it read the config uses what is saved and never sends its spent
// refresh secret: the server would end the sign-in.
func TestRenewTakesTheSavedCredential(t *testing.T) {
	useConfig(t)
	ctx := testutil.Context(t, testutil.WaitMedium)
	api := newStandIn(t, nil)
	api.mu.Lock()
	first := api.mint("dana")
	api.mu.Unlock()
	exp := time.Now().Add(time.Minute)
	if _, err := saveLogin(config{}, api.URL, credential{Method: methodSSO, Token: first.Token, User: "dana", ExpiresAt: &exp, RefreshToken: first.RefreshToken}); err != nil {
		t.Fatal(err)
	}
	stale, _ := loadConfig()
	other, _ := loadConfig()
	renewed, err := other.renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := stale.renew(ctx)
	if err != nil || got != renewed || stale.Token != renewed {
		t.Fatalf("the stale devgpu got %q, %v; want %q", got, err, renewed)
	}
	api.mu.Lock()
	if !slices.Equal(api.sent, []string{first.RefreshToken}) {
		t.Errorf("refresh tokens sent: %q", api.sent)
	}
	api.mu.Unlock()

	// Logged out in another devgpu meanwhile.
	if err := saveCredential(api.URL, nil); err != nil {
		t.Fatal(err)
	}
	_, err = stale.renew(ctx)
	if err == nil || !strings.HasPrefix(err.Error(), "you logged out of "+api.URL+" in another devgpu") {
		t.Errorf("got %v", err)
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.sent) != 1 {
		t.Errorf("refresh tokens sent: %q", api.sent)
	}
}

// A single sign-on an older devgpu saved for a server reached without
// TLS is not renewed: the refresh secret would travel in the clear.
func TestRenewRefusesInsecureServer(t *testing.T) {
	useConfig(t)
	exp := time.Now().Add(time.Minute)
	if _, err := saveLogin(config{}, "http://devgpu.example.com", credential{Method: methodSSO, Token: "t", ExpiresAt: &exp, RefreshToken: "r"}); err != nil {
		t.Fatal(err)
	}
	c, _ := loadConfig()
	_, err := c.renew(testutil.Context(t, testutil.WaitShort))
	want := "single sign-on needs an https server URL (or http on loopback); log in to https://devgpu.example.com"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}
