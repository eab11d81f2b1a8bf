package sso_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
)

// webProvider is a Provider for op's confidential web client, as the web
// console's sign-in uses it; fields set in cfg are kept.
func webProvider(t *testing.T, op *oidcop.OP, cfg sso.Config) *sso.Provider {
	t.Helper()
	cfg.ClientID = oidcop.WebClientID
	if cfg.ClientSecret == "" {
		cfg.ClientSecret = oidcop.WebClientSecret
	}
	return newProvider(t, op, cfg, nil)
}

// aliceOnTheWeb is an identity provider that knows alice (in ml and
// gpu-admins), the person signInAt signs in as, and a web Provider for it.
func aliceOnTheWeb(t *testing.T) (*oidcop.OP, *sso.Provider) {
	t.Helper()
	op := oidcop.Start(t, oidcop.Options{})
	op.AddUser("alice", "alice-pw", "ml", "gpu-admins")
	return op, webProvider(t, op, sso.Config{})
}

// webRedirect is a redirect URI the web client accepts (any loopback
// port), where nothing listens: the provider's redirect is read, not
// followed.
func webRedirect(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprintf("http://%s/console/sso/callback", ln.Addr())
}

// webSignIn is one sign-in as alice through p's authorization URL: the
// code the provider sends back, with the verifier and nonce it was asked
// with.
type webSignIn struct {
	code, verifier, nonce, redirect string
}

func signInAt(t *testing.T, ctx context.Context, op *oidcop.OP, p *sso.Provider) webSignIn {
	t.Helper()
	s := webSignIn{verifier: oauth2.GenerateVerifier(), nonce: "nonce-" + t.Name(), redirect: webRedirect(t)}
	authURL, err := p.AuthCodeURL(ctx, s.redirect, "state-1", s.nonce, s.verifier)
	if err != nil {
		t.Fatalf("AuthCodeURL: %v", err)
	}
	back, err := op.Browse(ctx, authURL, "alice", "alice-pw")
	if err != nil {
		t.Fatalf("sign in at the provider: %v", err)
	}
	if back.Query().Get("state") != "state-1" || back.Query().Get("code") == "" {
		t.Fatalf("the provider sent the browser back to %s, without the state or a code", back)
	}
	s.code = back.Query().Get("code")
	return s
}

// The authorization URL asks for a code as the configured client, with
// the scopes, the redirect URI, state, nonce and the S256 challenge of
// the verifier, and carries no secret.
func TestAuthCodeURL(t *testing.T) {
	t.Parallel()
	op := oidcop.Start(t, oidcop.Options{})
	p := webProvider(t, op, sso.Config{})
	ctx := testutil.Context(t, testutil.WaitLong)
	verifier := oauth2.GenerateVerifier()
	raw, err := p.AuthCodeURL(ctx, "https://devgpu.example.com/console/sso/callback", "the-state", "the-nonce", verifier)
	if err != nil {
		t.Fatalf("AuthCodeURL: %v", err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Scheme + "://" + u.Host + u.Path; got != op.Issuer+oidcop.AuthPath {
		t.Errorf("the authorization URL is at %s, not the provider's %s", got, op.Issuer+oidcop.AuthPath)
	}
	sum := sha256.Sum256([]byte(verifier))
	want := url.Values{
		"client_id": {oidcop.WebClientID}, "response_type": {"code"}, "scope": {strings.Join(oidcop.Scopes, " ")},
		"redirect_uri": {"https://devgpu.example.com/console/sso/callback"}, "state": {"the-state"}, "nonce": {"the-nonce"},
		"code_challenge_method": {"S256"}, "code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])},
	}
	if got := u.Query(); !reflect.DeepEqual(got, want) {
		t.Errorf("the authorization URL's query:\n got %v\nwant %v", got, want)
	}

	stopped := oidcop.Start(t, oidcop.Options{})
	q := webProvider(t, stopped, sso.Config{})
	stopped.Stop()
	_, err = q.AuthCodeURL(ctx, "https://devgpu.example.com/console/sso/callback", "s", "n", verifier)
	wantErr(t, err, true, false, "cannot be reached")
}

// Exchange redeems a code once, with its verifier and redirect URI, as
// the web client with its secret, and verifies the ID token against the
// sign-in's nonce; each wrong part is refused in its own words, and a
// provider in trouble is told apart from a refusal.
func TestExchange(t *testing.T) {
	t.Parallel()
	op, p := aliceOnTheWeb(t)
	ctx := testutil.Context(t, testutil.WaitLong)

	s := signInAt(t, ctx, op, p)
	id, refresh, err := p.Exchange(ctx, s.code, s.verifier, s.redirect, s.nonce)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if id.Name != "alice" || id.Subject != op.Subject("alice") || !reflect.DeepEqual(id.Groups, []string{"gpu-admins", "ml"}) || refresh == "" {
		t.Fatalf("Exchange = %+v, refresh %q", id, refresh)
	}
	// A code is redeemed once.
	_, _, err = p.Exchange(ctx, s.code, s.verifier, s.redirect, s.nonce)
	wantErr(t, err, false, false, "refused the sign-in's authorization code", "invalid_grant", "sign in again")

	for _, c := range []struct {
		name   string
		change func(*webSignIn)
		parts  []string
	}{
		{"another verifier", func(s *webSignIn) { s.verifier = oauth2.GenerateVerifier() }, []string{"invalid_grant"}},
		{"another redirect URI", func(s *webSignIn) { s.redirect = webRedirect(t) }, []string{"invalid_grant"}},
		{"another nonce", func(s *webSignIn) { s.nonce += "x" }, []string{"nonce is not the one this login sent"}},
		{"no nonce", func(s *webSignIn) { s.nonce = "" }, []string{"needs the nonce"}},
	} {
		s := signInAt(t, ctx, op, p)
		c.change(&s)
		_, _, err := p.Exchange(ctx, s.code, s.verifier, s.redirect, s.nonce)
		t.Logf("%s:", c.name)
		wantErr(t, err, false, false, c.parts...)
	}

	// The client's secret is sent: a wrong one is the configuration's
	// fault, named as such.
	wrong := webProvider(t, op, sso.Config{ClientSecret: "not-the-secret"})
	s = signInAt(t, ctx, op, wrong)
	_, _, err = wrong.Exchange(ctx, s.code, s.verifier, s.redirect, s.nonce)
	wantErr(t, err, false, false, "refuses devgpu's web sign-in", "oidc.client_secret", "/console/sso/callback")

	// A provider in trouble (503) is unreachable, not a refusal.
	failing := webProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: failTokens{next: http.DefaultTransport}, Timeout: testutil.WaitShort}})
	s = signInAt(t, ctx, op, failing)
	_, _, err = failing.Exchange(ctx, s.code, s.verifier, s.redirect, s.nonce)
	wantErr(t, err, true, false, "failed to answer the sign-in", "try again later")
}

// RefreshWeb redeems a web sign-in's refresh token as the web client,
// with its secret (the plain Refresh, as the public client, cannot), and
// reads the groups the provider says now; a wrong secret is the
// configuration's fault, never a revocation that would end the sign-in.
func TestRefreshWeb(t *testing.T) {
	t.Parallel()
	op, p := aliceOnTheWeb(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	s := signInAt(t, ctx, op, p)
	_, refresh, err := p.Exchange(ctx, s.code, s.verifier, s.redirect, s.nonce)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}

	wrong := webProvider(t, op, sso.Config{ClientSecret: "not-the-secret"})
	_, _, err = wrong.RefreshWeb(ctx, refresh)
	wantErr(t, err, true, false, "refuses devgpu's refresh")
	_, _, err = p.Refresh(ctx, refresh) // as a public client: no secret
	if err == nil || sso.IsRevoked(err) {
		t.Errorf("a web sign-in's refresh token redeemed without the secret: %v; want a refusal that is not a revocation", err)
	}

	op.SetGroups("alice", "nlp")
	id, next, err := p.RefreshWeb(ctx, refresh)
	if err != nil {
		t.Fatalf("RefreshWeb: %v", err)
	}
	if id.Name != "alice" || !reflect.DeepEqual(id.Groups, []string{"nlp"}) || next == "" {
		t.Fatalf("RefreshWeb = %+v, %q", id, next)
	}
	op.DisableUser("alice")
	_, _, err = p.RefreshWeb(ctx, next)
	wantErr(t, err, false, true, "no longer accepts this sign-in")
}
