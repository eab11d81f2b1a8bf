package oidcop_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
)

// claims are the ID token claims the tests look at.
type claims struct {
	Subject           string   `json:"sub"`
	PreferredUsername string   `json:"preferred_username"`
	Email             string   `json:"email"`
	Groups            []string `json:"groups"`
	Nonce             string   `json:"nonce"`
}

// verify checks an ID token as devgpu's server does (go-oidc: signature,
// issuer, audience, expiry) and answers its claims.
func verify(t *testing.T, ctx context.Context, p *oidcop.OP, clientID, idToken string) (*oidc.IDToken, claims) {
	t.Helper()
	provider, err := oidc.NewProvider(ctx, p.Issuer)
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	tok, err := provider.Verifier(&oidc.Config{ClientID: clientID}).Verify(ctx, idToken)
	if err != nil {
		t.Fatalf("verify the ID token: %v", err)
	}
	var c claims
	if err := tok.Claims(&c); err != nil {
		t.Fatal(err)
	}
	return tok, c
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	ctx := testutil.Context(t, testutil.WaitMedium)
	if !strings.HasPrefix(p.Issuer, "http://127.0.0.1:") {
		t.Fatalf("issuer %q is not on loopback", p.Issuer)
	}
	resp, err := http.Get(p.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer      string   `json:"issuer"`
		Auth        string   `json:"authorization_endpoint"`
		Token       string   `json:"token_endpoint"`
		Device      string   `json:"device_authorization_endpoint"`
		Grants      []string `json:"grant_types_supported"`
		PKCEMethods []string `json:"code_challenge_methods_supported"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	want := p.Endpoint(oidcop.CLIClientID)
	if doc.Issuer != p.Issuer || doc.Auth != want.AuthURL || doc.Token != want.TokenURL || doc.Device != want.DeviceAuthURL {
		t.Errorf("discovery %+v does not match issuer %s and endpoint %+v", doc, p.Issuer, want)
	}
	for _, g := range []string{"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"} {
		if !slices.Contains(doc.Grants, g) {
			t.Errorf("grant_types_supported %v lacks %s", doc.Grants, g)
		}
	}
	if !slices.Contains(doc.PKCEMethods, "S256") {
		t.Errorf("code_challenge_methods_supported %v lacks S256", doc.PKCEMethods)
	}
	// go-oidc accepts it.
	if _, err := oidc.NewProvider(ctx, p.Issuer); err != nil {
		t.Fatalf("go-oidc discovery: %v", err)
	}
}

func TestLoginClaims(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.AddUser("alice", "pw-alice", "gpu-users", "ml-team")
	p.AddUser("bob@corp.example", "pw-bob")
	ctx := testutil.Context(t, testutil.WaitMedium)

	for _, clientID := range []string{oidcop.CLIClientID, oidcop.OtherClientID, oidcop.WebClientID} {
		t.Run(clientID, func(t *testing.T) {
			toks, err := p.Login(ctx, clientID, "alice", "pw-alice")
			if err != nil {
				t.Fatal(err)
			}
			if toks.AccessToken == "" || toks.RefreshToken == "" || toks.Nonce == "" {
				t.Fatalf("tokens lack an access token, refresh token or nonce: %+v", toks)
			}
			idt, c := verify(t, ctx, p, clientID, toks.IDToken)
			if !slices.Equal(idt.Audience, []string{clientID}) {
				t.Errorf("aud %v, want [%s]", idt.Audience, clientID)
			}
			if c.Nonce != toks.Nonce {
				t.Errorf("nonce %q, want %q", c.Nonce, toks.Nonce)
			}
			if c.Subject != p.Subject("alice") || c.PreferredUsername != "alice" || c.Email != "alice@example.test" {
				t.Errorf("claims %+v: want sub %s, preferred_username alice, email alice@example.test", c, p.Subject("alice"))
			}
			if !slices.Equal(c.Groups, []string{"gpu-users", "ml-team"}) {
				t.Errorf("groups %v, want [gpu-users ml-team]", c.Groups)
			}
		})
	}

	t.Run("no groups", func(t *testing.T) {
		toks, err := p.Login(ctx, oidcop.CLIClientID, "bob@corp.example", "pw-bob")
		if err != nil {
			t.Fatal(err)
		}
		_, c := verify(t, ctx, p, oidcop.CLIClientID, toks.IDToken)
		if c.Email != "bob@corp.example" || c.Groups == nil || len(c.Groups) != 0 {
			t.Errorf("claims %+v: want email bob@corp.example and an empty groups claim", c)
		}
	})

	t.Run("wrong audience", func(t *testing.T) {
		toks, err := p.Login(ctx, oidcop.OtherClientID, "alice", "pw-alice")
		if err != nil {
			t.Fatal(err)
		}
		provider, err := oidc.NewProvider(ctx, p.Issuer)
		if err != nil {
			t.Fatal(err)
		}
		_, err = provider.Verifier(&oidc.Config{ClientID: oidcop.CLIClientID}).Verify(ctx, toks.IDToken)
		if err == nil || !strings.Contains(err.Error(), "audience") {
			t.Fatalf("another client's ID token verified for the CLI: %v", err)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		_, err := p.Login(ctx, oidcop.CLIClientID, "alice", "nope")
		if err == nil || !strings.Contains(err.Error(), "username or password wrong") {
			t.Fatalf("login with a wrong password: %v", err)
		}
	})
}

func TestRefreshCarriesCurrentGroups(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.AddUser("alice", "pw", "g1")
	ctx := testutil.Context(t, testutil.WaitMedium)
	toks, err := p.Login(ctx, oidcop.CLIClientID, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	p.SetGroups("alice", "g2", "g3")

	// The public client refreshes without a secret, with oauth2 as the CLI
	// would.
	conf := p.OAuth2Config(oidcop.CLIClientID, "")
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: toks.RefreshToken}).Token()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	next := oidcop.TokensFrom(tok)
	if next.IDToken == "" || next.IDToken == toks.IDToken {
		t.Fatal("the refresh answered no new ID token")
	}
	if next.RefreshToken == "" || next.RefreshToken == toks.RefreshToken {
		t.Errorf("the refresh token was not rotated")
	}
	_, c := verify(t, ctx, p, oidcop.CLIClientID, next.IDToken)
	if !slices.Equal(c.Groups, []string{"g2", "g3"}) || c.PreferredUsername != "alice" {
		t.Errorf("refreshed claims %+v: want groups [g2 g3] and preferred_username alice", c)
	}

	// The rotated token is spent.
	if _, err := p.Refresh(ctx, oidcop.CLIClientID, toks.RefreshToken); !isOAuthError(err, "invalid_grant") {
		t.Errorf("a spent refresh token: %v, want invalid_grant", err)
	}
	// Another client cannot redeem it.
	if _, err := p.Refresh(ctx, oidcop.OtherClientID, next.RefreshToken); !isOAuthError(err, "invalid_grant") {
		t.Errorf("another client's refresh: %v, want invalid_grant", err)
	}
	// The web client refreshes with its secret.
	web, err := p.Login(ctx, oidcop.WebClientID, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Refresh(ctx, oidcop.WebClientID, web.RefreshToken); err != nil {
		t.Errorf("web client refresh: %v", err)
	}
}

func TestDisableUser(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.AddUser("alice", "pw", "g1")
	ctx := testutil.Context(t, testutil.WaitMedium)
	toks, err := p.Login(ctx, oidcop.CLIClientID, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	p.DisableUser("alice")
	if _, err := p.Refresh(ctx, oidcop.CLIClientID, toks.RefreshToken); !isOAuthError(err, "invalid_grant") {
		t.Errorf("refresh of a disabled user: %v, want invalid_grant", err)
	}
	if _, err := p.Login(ctx, oidcop.CLIClientID, "alice", "pw"); err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("login of a disabled user: %v, want refused as disabled", err)
	}
	p.EnableUser("alice")
	if _, err := p.Refresh(ctx, oidcop.CLIClientID, toks.RefreshToken); err != nil {
		t.Errorf("refresh after EnableUser: %v", err)
	}
}

func TestDeviceFlow(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.AddUser("carol", "pw", "ml-team")
	p.AddUser("dave", "pw")
	ctx := testutil.Context(t, testutil.WaitLong)
	conf := p.OAuth2Config(oidcop.CLIClientID, "")

	t.Run("approved", func(t *testing.T) {
		da, err := conf.DeviceAuth(ctx)
		if err != nil {
			t.Fatalf("device authorization: %v", err)
		}
		if da.Interval != 1 || !strings.HasPrefix(da.VerificationURI, p.Issuer) || da.UserCode == "" {
			t.Fatalf("device authorization %+v: want interval 1 and a verification URI under %s", da, p.Issuer)
		}
		approved := make(chan error, 1)
		go func() { approved <- p.ApproveDevice(ctx, da.UserCode, "carol", "pw") }()
		tok, err := conf.DeviceAccessToken(ctx, da)
		if err != nil {
			t.Fatalf("device access token: %v", err)
		}
		if err := <-approved; err != nil {
			t.Fatal(err)
		}
		toks := oidcop.TokensFrom(tok)
		if toks.RefreshToken == "" {
			t.Error("the device flow answered no refresh token")
		}
		_, c := verify(t, ctx, p, oidcop.CLIClientID, toks.IDToken)
		if c.Subject != p.Subject("carol") || c.PreferredUsername != "carol" || !slices.Equal(c.Groups, []string{"ml-team"}) {
			t.Errorf("claims %+v: want carol's subject, name and groups [ml-team]", c)
		}
		// Its refresh token works like the browser flow's.
		p.SetGroups("carol", "admins")
		next, err := p.Refresh(ctx, oidcop.CLIClientID, toks.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if _, c := verify(t, ctx, p, oidcop.CLIClientID, next.IDToken); !slices.Equal(c.Groups, []string{"admins"}) {
			t.Errorf("refreshed groups %v, want [admins]", c.Groups)
		}
	})

	t.Run("LoginDevice", func(t *testing.T) {
		toks, err := p.LoginDevice(ctx, oidcop.CLIClientID, "carol", "pw")
		if err != nil {
			t.Fatal(err)
		}
		if _, c := verify(t, ctx, p, oidcop.CLIClientID, toks.IDToken); c.PreferredUsername != "carol" {
			t.Errorf("preferred_username %q, want carol", c.PreferredUsername)
		}
	})

	t.Run("auto-detected auth style", func(t *testing.T) {
		// A client that leaves oauth2 to probe (header first, then form)
		// still gets through: the public client's empty secret in a
		// header is refused and the form is tried.
		conf := p.OAuth2Config(oidcop.CLIClientID, "")
		conf.Endpoint.AuthStyle = oauth2.AuthStyleAutoDetect
		da, err := conf.DeviceAuth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.ApproveDevice(ctx, da.UserCode, "carol", "pw"); err != nil {
			t.Fatal(err)
		}
		tok, err := conf.DeviceAccessToken(ctx, da)
		if err != nil {
			t.Fatalf("device access token: %v", err)
		}
		if _, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token(); err != nil {
			t.Errorf("refresh: %v", err)
		}
	})

	t.Run("denied", func(t *testing.T) {
		da, err := conf.DeviceAuth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.DenyDevice(ctx, da.UserCode, "dave", "pw"); err != nil {
			t.Fatal(err)
		}
		if _, err := conf.DeviceAccessToken(ctx, da); !isOAuthError(err, "access_denied") {
			t.Errorf("denied device code: %v, want access_denied", err)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		da, err := conf.DeviceAuth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.DisableUser("dave")
		if err := p.ApproveDevice(ctx, da.UserCode, "dave", "pw"); err == nil || !strings.Contains(err.Error(), "disabled") {
			t.Errorf("device sign-in of a disabled user: %v, want refused as disabled", err)
		}
		if err := p.ApproveDevice(ctx, "NOPE-NOPE", "carol", "pw"); err == nil {
			t.Error("an unknown user code was approved")
		}
	})
}

func TestBrowseLoopbackRedirects(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.AddUser("alice", "pw", "g1")
	ctx := testutil.Context(t, testutil.WaitMedium)

	// A CLI listening on a random loopback port, on 127.0.0.1 or
	// localhost: the provider redirects there with the code.
	for _, host := range []string{"127.0.0.1", "localhost"} {
		t.Run(host, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			port := l.Addr().(*net.TCPAddr).Port
			redirect := fmt.Sprintf("http://%s:%d/callback", host, port)
			conf := p.OAuth2Config(oidcop.CLIClientID, redirect)
			verifier := oauth2.GenerateVerifier()
			authURL := conf.AuthCodeURL("st4te", oauth2.S256ChallengeOption(verifier), oidc.Nonce("n0nce"))
			final, err := p.Browse(ctx, authURL, "alice", "pw")
			if err != nil {
				t.Fatal(err)
			}
			if final.Host != fmt.Sprintf("%s:%d", host, port) || final.Path != "/callback" || final.Query().Get("state") != "st4te" {
				t.Fatalf("final redirect %s: want %s with state st4te", final, redirect)
			}
			tok, err := conf.Exchange(ctx, final.Query().Get("code"), oauth2.VerifierOption(verifier))
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			_, c := verify(t, ctx, p, oidcop.CLIClientID, oidcop.TokensFrom(tok).IDToken)
			if c.Nonce != "n0nce" {
				t.Errorf("nonce %q, want n0nce", c.Nonce)
			}
		})
	}

	t.Run("code needs the verifier", func(t *testing.T) {
		conf := p.OAuth2Config(oidcop.CLIClientID, "http://127.0.0.1:4711/callback")
		authURL := conf.AuthCodeURL("s", oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
		final, err := p.Browse(ctx, authURL, "alice", "pw")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conf.Exchange(ctx, final.Query().Get("code"), oauth2.VerifierOption(oauth2.GenerateVerifier())); !isOAuthError(err, "invalid_grant") {
			t.Errorf("exchange with another verifier: %v, want invalid_grant", err)
		}
	})

	t.Run("unregistered redirect refused", func(t *testing.T) {
		conf := p.OAuth2Config(oidcop.CLIClientID, "http://127.0.0.1:4711/elsewhere")
		authURL := conf.AuthCodeURL("s", oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
		if final, err := p.Browse(ctx, authURL, "alice", "pw"); err == nil {
			t.Fatalf("an unregistered redirect URI got %s", final)
		}
	})
}

func TestExpiredAndForgedTokens(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{IDTokenLifetime: -time.Minute})
	p.AddUser("alice", "pw", "g1")
	ctx := testutil.Context(t, testutil.WaitMedium)
	provider, err := oidc.NewProvider(ctx, p.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	verifier := provider.Verifier(&oidc.Config{ClientID: oidcop.CLIClientID})

	toks, err := p.Login(ctx, oidcop.CLIClientID, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	var expired *oidc.TokenExpiredError
	if _, err := verifier.Verify(ctx, toks.IDToken); !errors.As(err, &expired) {
		t.Errorf("an expired ID token: %v, want TokenExpiredError", err)
	}

	p.SetIDTokenLifetime(time.Hour)
	toks, err = p.Login(ctx, oidcop.CLIClientID, "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier.Verify(ctx, toks.IDToken); err != nil {
		t.Fatalf("after SetIDTokenLifetime: %v", err)
	}
	parts := strings.Split(toks.IDToken, ".")
	sig := []byte(parts[2])
	sig[len(sig)/2] ^= 1
	tampered := parts[0] + "." + parts[1] + "." + string(sig)
	if _, err := verifier.Verify(ctx, tampered); err == nil {
		t.Error("a tampered ID token verified")
	}

	// SignClaims makes tokens the provider would not issue, signed by it.
	now := time.Now()
	future, err := p.SignClaims(map[string]any{
		"iss": p.Issuer, "sub": p.Subject("alice"), "aud": oidcop.CLIClientID,
		"iat": now.Add(time.Hour).Unix(), "nbf": now.Add(time.Hour).Unix(), "exp": now.Add(2 * time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier.Verify(ctx, future); err == nil || !strings.Contains(err.Error(), "nbf") {
		t.Errorf("a token valid only in an hour: %v, want refused as not valid yet", err)
	}
	good, err := p.SignClaims(map[string]any{
		"iss": p.Issuer, "sub": p.Subject("alice"), "aud": oidcop.CLIClientID,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier.Verify(ctx, good); err != nil {
		t.Errorf("a token signed with SignClaims: %v", err)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.Stop()
	p.Stop()
	ctx := testutil.Context(t, testutil.WaitShort)
	if _, err := oidc.NewProvider(ctx, p.Issuer); err == nil {
		t.Fatal("discovery answered after Stop")
	}
	var opErr *net.OpError
	_, err := http.Get(p.Issuer + "/.well-known/openid-configuration")
	if !errors.As(err, &opErr) {
		t.Fatalf("a request after Stop: %v, want a connection error", err)
	}
}

func TestSubjectPerAccount(t *testing.T) {
	t.Parallel()
	p := oidcop.Start(t, oidcop.Options{})
	p.AddUser("alice", "pw")
	first := p.Subject("alice")
	p.AddUser("alice", "pw2")
	if second := p.Subject("alice"); second == first || second == "" {
		t.Fatalf("a remade account kept subject %q", first)
	}
	ctx := testutil.Context(t, testutil.WaitMedium)
	if _, err := p.Login(ctx, oidcop.CLIClientID, "alice", "pw"); err == nil {
		t.Error("the old account's password still works")
	}
}

// isOAuthError reports whether err is an OAuth error response with code.
func isOAuthError(err error, code string) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == code
}
