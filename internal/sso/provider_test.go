package sso_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
)

// setup starts the real test provider with alice in two groups and
// returns it with a Provider for the CLI's client.
func setup(t *testing.T, opts oidcop.Options, now func() time.Time) (*oidcop.OP, *sso.Provider, context.Context) {
	t.Helper()
	op := oidcop.Start(t, opts)
	op.AddUser("alice", "alice-pw", "ml", "gpu-admins")
	return op, newProvider(t, op, sso.Config{}, now), testutil.Context(t, testutil.WaitLong)
}

// newProvider configures a Provider for op's CLI client; fields set in
// cfg are kept.
func newProvider(t *testing.T, op *oidcop.OP, cfg sso.Config, now func() time.Time) *sso.Provider {
	t.Helper()
	if cfg.Issuer == "" {
		cfg.Issuer = op.Issuer
	}
	if cfg.ClientID == "" {
		cfg.ClientID = oidcop.CLIClientID
	}
	cfg.Scopes = oidcop.Scopes
	p, err := sso.New(cfg, now)
	if err != nil {
		t.Fatalf("sso.New: %v", err)
	}
	return p
}

func login(t *testing.T, ctx context.Context, op *oidcop.OP, clientID string) oidcop.Tokens {
	t.Helper()
	toks, err := op.Login(ctx, clientID, "alice", "alice-pw")
	if err != nil {
		t.Fatalf("log in as alice: %v", err)
	}
	return toks
}

// wantErr checks that err is an *sso.Error whose sentence holds each of
// parts, and whose flags are as given.
func wantErr(t *testing.T, err error, unreachable, revoked bool, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one with %q", parts)
	}
	e, ok := err.(*sso.Error)
	if !ok {
		t.Fatalf("error %v (%T) is not an *sso.Error", err, err)
	}
	t.Logf("error: %s", e.Error())
	for _, p := range parts {
		if !strings.Contains(e.Error(), p) {
			t.Errorf("error %q lacks %q", e.Error(), p)
		}
	}
	if sso.IsUnreachable(err) != unreachable || sso.IsRevoked(err) != revoked {
		t.Errorf("error %q: unreachable=%v revoked=%v; want %v %v", e.Error(), sso.IsUnreachable(err), sso.IsRevoked(err), unreachable, revoked)
	}
}

func TestVerifyAcceptsAGoodToken(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	id, err := p.Verify(ctx, toks.IDToken, toks.Nonce)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if id.Name != "alice" || id.Subject != op.Subject("alice") || id.NoGroupsClaim ||
		!reflect.DeepEqual(id.Groups, []string{"gpu-admins", "ml"}) {
		t.Fatalf("Verify = %+v", id)
	}
	if until := time.Until(id.Expiry); until <= 0 || until > time.Hour+time.Minute {
		t.Fatalf("Expiry %s is not about an hour from now", id.Expiry)
	}
	// The device flow sends no nonce: Verify without one.
	if _, err := p.Verify(ctx, toks.IDToken, ""); err != nil {
		t.Fatalf("Verify without a nonce: %v", err)
	}
}

func TestVerifyDeviceFlowToken(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	conf := op.OAuth2Config(oidcop.CLIClientID, "")
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatalf("device authorization: %v", err)
	}
	if err := op.ApproveDevice(ctx, da.UserCode, "alice", "alice-pw"); err != nil {
		t.Fatalf("approve: %v", err)
	}
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatalf("device access token: %v", err)
	}
	toks := oidcop.TokensFrom(tok)
	id, err := p.Verify(ctx, toks.IDToken, "")
	if err != nil || id.Name != "alice" || !reflect.DeepEqual(id.Groups, []string{"gpu-admins", "ml"}) {
		t.Fatalf("Verify of a device-flow token = %+v, %v", id, err)
	}
	if toks.RefreshToken == "" {
		t.Fatal("the device flow answered no refresh token")
	}
}

// segments splits a JWT.
func segments(t *testing.T, jwt string) []string {
	t.Helper()
	s := strings.Split(jwt, ".")
	if len(s) != 3 {
		t.Fatalf("%q is not a JWS", jwt)
	}
	return s
}

func TestVerifyRefusesTamperedTokens(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	s := segments(t, toks.IDToken)

	// A byte flipped in the middle of the signature.
	sig := []byte(s[2])
	i := len(sig) / 2
	if sig[i] == 'A' {
		sig[i] = 'B'
	} else {
		sig[i] = 'A'
	}
	_, err := p.Verify(ctx, s[0]+"."+s[1]+"."+string(sig), toks.Nonce)
	wantErr(t, err, false, false, "signature does not verify against the provider's keys", "tampered with")

	// The payload changed to add a group, the signature kept.
	payload, err := base64.RawURLEncoding.DecodeString(s[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	claims["groups"] = []string{"gpu-admins", "ml", "root"}
	forged, _ := json.Marshal(claims)
	_, err = p.Verify(ctx, s[0]+"."+base64.RawURLEncoding.EncodeToString(forged)+"."+s[2], toks.Nonce)
	wantErr(t, err, false, false, "signature does not verify")

	// Signed by another provider (its own keys), for the same client.
	other := oidcop.Start(t, oidcop.Options{})
	other.AddUser("alice", "alice-pw", "gpu-admins")
	otherToks, err := other.Login(ctx, oidcop.CLIClientID, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Verify(ctx, otherToks.IDToken, otherToks.Nonce)
	wantErr(t, err, false, false, "signature does not verify", "comes from another provider")

	// Not a JWT at all, and unsigned ("none").
	_, err = p.Verify(ctx, "not-a-token", "")
	wantErr(t, err, false, false, "not a JWT signed")
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`))
	_, err = p.Verify(ctx, none+"."+s[1]+".", "")
	wantErr(t, err, false, false, "not a JWT signed")
}

func TestVerifyRefusesExpiredTokens(t *testing.T) {
	t.Parallel()
	// Issued expired by the provider.
	op, p, ctx := setup(t, oidcop.Options{IDTokenLifetime: -time.Minute}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	_, err := p.Verify(ctx, toks.IDToken, toks.Nonce)
	wantErr(t, err, false, false, "the ID token expired at", "this server's time is", "check NTP")

	// Valid at the provider, but this server's clock runs two hours ahead.
	op2, _, _ := setup(t, oidcop.Options{}, nil)
	ahead := newProvider(t, op2, sso.Config{}, func() time.Time { return time.Now().Add(2 * time.Hour) })
	toks = login(t, ctx, op2, oidcop.CLIClientID)
	_, err = ahead.Verify(ctx, toks.IDToken, toks.Nonce)
	wantErr(t, err, false, false, "the ID token expired at", "clock")
}

func TestVerifyClockSkewBehind(t *testing.T) {
	t.Parallel()
	// This server's clock an hour behind: the token is issued "in the
	// future".
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	behind := newProvider(t, op, sso.Config{}, func() time.Time { return time.Now().Add(-time.Hour) })
	toks := login(t, ctx, op, oidcop.CLIClientID)
	_, err := behind.Verify(ctx, toks.IDToken, toks.Nonce)
	wantErr(t, err, false, false, "was issued at", "after this server's time", "check NTP")

	// A token whose nbf lies an hour ahead.
	p := newProvider(t, op, sso.Config{}, nil)
	now := time.Now()
	raw := sign(t, op, map[string]any{"nbf": now.Add(time.Hour).Unix()})
	_, err = p.Verify(ctx, raw, "")
	wantErr(t, err, false, false, "is not valid before", "check NTP")
}

func TestVerifyRefusesWrongAudience(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.OtherClientID)
	_, err := p.Verify(ctx, toks.IDToken, toks.Nonce)
	wantErr(t, err, false, false, `issued for client "other-app", not devgpu's client "devgpu-cli"`, "oidc.client_id")
}

func TestVerifyNonce(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	_, err := p.Verify(ctx, toks.IDToken, toks.Nonce+"x")
	wantErr(t, err, false, false, "nonce is not the one this login sent")

	raw := sign(t, op, nil) // no nonce claim
	_, err = p.Verify(ctx, raw, "a-nonce")
	wantErr(t, err, false, false, "carries no nonce")
}

// sign makes an ID token with the provider's key: alice's claims for the
// CLI client, with extra set on top (a nil value deletes a claim).
func sign(t *testing.T, op *oidcop.OP, extra map[string]any) string {
	t.Helper()
	now := time.Now()
	claims := map[string]any{
		"iss":                op.Issuer,
		"sub":                op.Subject("alice"),
		"aud":                oidcop.CLIClientID,
		"exp":                now.Add(time.Hour).Unix(),
		"iat":                now.Unix(),
		"preferred_username": "alice",
		"email":              "alice@example.test",
		"groups":             []string{"ml"},
	}
	for k, v := range extra {
		if v == nil {
			delete(claims, k)
		} else {
			claims[k] = v
		}
	}
	raw, err := op.SignClaims(claims)
	if err != nil {
		t.Fatalf("sign claims: %v", err)
	}
	return raw
}

func TestVerifyRefusesAnotherIssuer(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	raw := sign(t, op, map[string]any{"iss": "https://login.evil.example"})
	_, err := p.Verify(ctx, raw, "")
	wantErr(t, err, false, false, `issued by "https://login.evil.example", not by devgpu's identity provider`)

	// The issuer configured with a trailing slash: discovery says which
	// to use.
	slash := newProvider(t, op, sso.Config{Issuer: op.Issuer + "/"}, nil)
	_, err = slash.Verify(ctx, raw, "")
	wantErr(t, err, true, false, "says its issuer is", "set oidc.issuer to exactly")
}

func TestVerifyClaims(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	for _, tc := range []struct {
		name  string
		cfg   sso.Config
		extra map[string]any
		want  sso.Identity // Name and Groups
		err   string
	}{
		{name: "one group as a string", extra: map[string]any{"groups": "ml"},
			want: sso.Identity{Name: "alice", Groups: []string{"ml"}}},
		{name: "groups sorted once each", extra: map[string]any{"groups": []string{"b", "a", "b"}},
			want: sso.Identity{Name: "alice", Groups: []string{"a", "b"}}},
		{name: "no groups claim", extra: map[string]any{"groups": nil},
			want: sso.Identity{Name: "alice", NoGroupsClaim: true}},
		{name: "email claim mapped", cfg: sso.Config{UsernameClaim: "email"}, extra: map[string]any{"email_verified": true},
			want: sso.Identity{Name: "alice_example.test", Groups: []string{"ml"}}},
		{name: "email verified as a string", cfg: sso.Config{UsernameClaim: "email"}, extra: map[string]any{"email_verified": "true"},
			want: sso.Identity{Name: "alice_example.test", Groups: []string{"ml"}}},
		{name: "upn lower-cased", cfg: sso.Config{UsernameClaim: "upn"}, extra: map[string]any{"upn": "Alice@Contoso.com"},
			want: sso.Identity{Name: "alice_contoso.com", Groups: []string{"ml"}}},
		{name: "custom groups claim", cfg: sso.Config{GroupsClaim: "roles"}, extra: map[string]any{"roles": []string{"r1"}},
			want: sso.Identity{Name: "alice", Groups: []string{"r1"}}},
		{name: "several audiences, azp devgpu", extra: map[string]any{"aud": []string{"devgpu-cli", "other-app"}, "azp": "devgpu-cli"},
			want: sso.Identity{Name: "alice", Groups: []string{"ml"}}},
		{name: "several audiences, azp another", extra: map[string]any{"aud": []string{"devgpu-cli", "other-app"}, "azp": "other-app"},
			err: `issued to client "other-app", not devgpu's client "devgpu-cli"`},
		{name: "several audiences, no azp", extra: map[string]any{"aud": []string{"other-app", "devgpu-cli"}},
			err: `the ID token is for several clients ("other-app", "devgpu-cli") and does not say which one it was issued to (no azp claim)`},
		{name: "several audiences, azp not a string", extra: map[string]any{"aud": []string{"devgpu-cli", "other-app"}, "azp": []string{"devgpu-cli"}},
			err: `not devgpu's client "devgpu-cli"`},
		{name: "one audience, no azp", extra: map[string]any{"aud": []string{"devgpu-cli"}},
			want: sso.Identity{Name: "alice", Groups: []string{"ml"}}},
		{name: "missing username claim", cfg: sso.Config{UsernameClaim: "upn"},
			err: "the ID token has no upn claim; set oidc.username_claim"},
		{name: "username not a string", extra: map[string]any{"preferred_username": 7},
			err: "claim is not a string"},
		{name: "unverified email", cfg: sso.Config{UsernameClaim: "email"}, extra: map[string]any{"email_verified": false},
			err: "the identity provider does not say your email address is verified, so devgpu cannot take it as your user name; ask the administrator to set oidc.username_claim to preferred_username"},
		// Entra sends no email_verified, and its mail attribute can be
		// set by users ("nOAuth"): a missing claim is refused too.
		{name: "email without email_verified", cfg: sso.Config{UsernameClaim: "email"},
			err: "does not say your email address is verified"},
		{name: "email_verified not true", cfg: sso.Config{UsernameClaim: "email"}, extra: map[string]any{"email_verified": "yes"},
			err: "does not say your email address is verified"},
		{name: "email_verified a list", cfg: sso.Config{UsernameClaim: "email"}, extra: map[string]any{"email_verified": []any{}},
			err: "does not say your email address is verified"},
		// Other claims do not need it.
		{name: "upn without email_verified", cfg: sso.Config{UsernameClaim: "upn"}, extra: map[string]any{"upn": "alice@contoso.com", "email_verified": false},
			want: sso.Identity{Name: "alice_contoso.com", Groups: []string{"ml"}}},
		{name: "groups not strings", extra: map[string]any{"groups": []int{1, 2}},
			err: "is not a list of group names; set oidc.groups_claim"},
		{name: "entra overage", extra: map[string]any{
			"groups":         nil,
			"_claim_names":   map[string]string{"groups": "src1"},
			"_claim_sources": map[string]any{"src1": map[string]string{"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}},
		}, err: "Groups assigned to the application"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pp := p
			if !reflect.DeepEqual(tc.cfg, sso.Config{}) {
				pp = newProvider(t, op, tc.cfg, nil)
			}
			id, err := pp.Verify(ctx, sign(t, op, tc.extra), "")
			if tc.err != "" {
				wantErr(t, err, false, false, tc.err)
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if id.Name != tc.want.Name || !reflect.DeepEqual(id.Groups, tc.want.Groups) || id.NoGroupsClaim != tc.want.NoGroupsClaim {
				t.Fatalf("Verify = %+v; want %+v", id, tc.want)
			}
		})
	}
}

func TestRefresh(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	if toks.RefreshToken == "" {
		t.Fatal("the login answered no refresh token")
	}

	// Groups changed at the provider: the refresh sees them.
	op.SetGroups("alice", "nlp")
	id, rt, err := p.Refresh(ctx, toks.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if id.Name != "alice" || id.Subject != op.Subject("alice") || !reflect.DeepEqual(id.Groups, []string{"nlp"}) {
		t.Fatalf("Refresh = %+v", id)
	}
	if rt == "" {
		t.Fatal("Refresh answered no refresh token to keep")
	}

	// Out of every group: an identity with no groups, not an error.
	op.SetGroups("alice")
	id, rt, err = p.Refresh(ctx, rt)
	if err != nil || len(id.Groups) != 0 {
		t.Fatalf("Refresh out of every group = %+v, %v", id, err)
	}

	// Disabled at the provider: revoked.
	op.DisableUser("alice")
	_, _, err = p.Refresh(ctx, rt)
	wantErr(t, err, false, true, "no longer accepts this sign-in", "invalid_grant", "devgpu login")

	// A refresh token the provider never issued: revoked too.
	_, _, err = p.Refresh(ctx, "no-such-token")
	wantErr(t, err, false, true, "no longer accepts this sign-in")

	_, _, err = p.Refresh(ctx, "")
	wantErr(t, err, false, true, "holds no refresh token")
}

func TestProviderStopped(t *testing.T) {
	t.Parallel()
	op, p, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	if _, err := p.Verify(ctx, toks.IDToken, toks.Nonce); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	op.Stop()

	// Refresh needs the provider.
	_, _, err := p.Refresh(ctx, toks.RefreshToken)
	wantErr(t, err, true, false, "cannot be reached", op.Issuer)

	// A token signed by a key not cached makes Verify fetch the keys,
	// which it cannot.
	s := segments(t, toks.IDToken)
	hdr, _ := base64.RawURLEncoding.DecodeString(s[0])
	var h map[string]any
	json.Unmarshal(hdr, &h)
	h["kid"] = "a-key-not-cached"
	hb, _ := json.Marshal(h)
	_, err = p.Verify(ctx, base64.RawURLEncoding.EncodeToString(hb)+"."+s[1]+"."+s[2], toks.Nonce)
	wantErr(t, err, true, false, "signing keys", "cannot be fetched")

	// A provider never discovered is unreachable from the first use.
	fresh := newProvider(t, op, sso.Config{}, nil)
	_, err = fresh.Verify(ctx, toks.IDToken, toks.Nonce)
	wantErr(t, err, true, false, "the identity provider at "+op.Issuer+" cannot be reached", "check the issuer URL")
}

// stripIDToken is a transport that removes id_token from the provider's
// token responses, as providers that answer a refresh without one do.
type stripIDToken struct{ next http.RoundTripper }

func (s stripIDToken) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(r)
	if err != nil || r.URL.Path != oidcop.TokenPath || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	delete(m, "id_token")
	body, _ = json.Marshal(m)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return resp, nil
}

func TestRefreshWithoutIDTokenAsksUserinfo(t *testing.T) {
	t.Parallel()
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	p := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: stripIDToken{http.DefaultTransport}, Timeout: testutil.WaitShort}}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	op.SetGroups("alice", "nlp", "ml")
	id, rt, err := p.Refresh(ctx, toks.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if id.Name != "alice" || id.Subject != op.Subject("alice") || !reflect.DeepEqual(id.Groups, []string{"ml", "nlp"}) || rt == "" {
		t.Fatalf("Refresh through userinfo = %+v, %q", id, rt)
	}
	if !id.Expiry.IsZero() {
		t.Fatalf("an identity from userinfo has an expiry: %s", id.Expiry)
	}
}

// failTokens is a transport under which the provider's token endpoint
// answers 503, as a provider in trouble does, or status with body.
type failTokens struct {
	next   http.RoundTripper
	status int
	body   string
}

func (f failTokens) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path != oidcop.TokenPath {
		return f.next.RoundTrip(r)
	}
	status, body := http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`
	if f.status != 0 {
		status, body = f.status, f.body
	}
	return &http.Response{
		StatusCode: status, Status: http.StatusText(status), Request: r,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
	}, nil
}

func TestRefreshFailures(t *testing.T) {
	t.Parallel()
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)

	failing := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: failTokens{next: http.DefaultTransport}, Timeout: testutil.WaitShort}}, nil)
	_, _, err := failing.Refresh(ctx, toks.RefreshToken)
	wantErr(t, err, true, false, "failed to answer the refresh", "temporarily_unavailable", "try again later")

	// A client the provider does not know (oidc.client_id wrong, or the
	// app no longer a public client) says nothing about the person: it is
	// never a revocation, which would end their sign-in.
	wrongClient := newProvider(t, op, sso.Config{ClientID: "no-such-client"}, nil)
	_, _, err = wrongClient.Refresh(ctx, toks.RefreshToken)
	wantErr(t, err, true, false, "no-such-client")
	// RFC 6749 section 5.2: a client the provider will not serve is 401
	// invalid_client (unauthorized_client: 400); neither is the person's
	// fault.
	refusing := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Timeout: testutil.WaitShort,
		Transport: failTokens{next: http.DefaultTransport, status: http.StatusUnauthorized, body: `{"error":"invalid_client"}`}}}, nil)
	_, _, err = refusing.Refresh(ctx, toks.RefreshToken)
	wantErr(t, err, true, false, "refuses devgpu's refresh", "invalid_client", "oidc.client_id")

	// The failure left the sign-in intact.
	p := newProvider(t, op, sso.Config{}, nil)
	if _, _, err := p.Refresh(ctx, toks.RefreshToken); err != nil {
		t.Fatalf("Refresh after the failures: %v", err)
	}
}
