package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

// A single sign-on never takes over a user made by hand (the bootstrap
// admin, a person with rights given by hand) whose name the provider
// gives: refused and audited, until an administrator allows the binding
// (--bind-sso), which the next login makes (user.bind). A service account
// is never bound; the audit log's actors are not user names.
func TestSSONoImplicitTakeover(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	for _, name := range []string{"dev", "root"} {
		r.op.AddUser(name, password, grpMLDevs)
		_, err := r.login(name)
		wantProblem(t, "a login under the name of "+name+", made by hand", err, http.StatusForbidden,
			fmt.Sprintf("user %s already exists in devgpu and is not bound to a single sign-on account; an administrator can allow it with `devgpu admin user update %s --bind-sso`", name, name))
		if u := r.user(name); u.Subject != "" {
			t.Errorf("%s after a refused login = %+v, want unbound", name, u)
		}
		if r.audited("auth.refused", ssoActor, name) != 1 {
			t.Errorf("the refused login of %s is not audited as auth.refused by sso", name)
		}
	}
	if got := r.members("dev"); !slices.Equal(got, []string{"default:developer:"}) {
		t.Errorf("dev after a refused login = %v, want only the hand-made membership", got)
	}

	// A pending binding goes only to someone the groups let in: the
	// bootstrap admin's hand-made rights do not go to whoever the provider
	// happens to name root.
	if _, err := r.client(r.admin).UpdateUser(ctx, "root", sdk.UserUpdate{BindSSO: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("root")
	_, err := r.login("root")
	wantProblem(t, "a binding login in no granting group", err, http.StatusForbidden, "none of the groups that grant access")
	if u := r.user("root"); u.Subject != store.SubjectPendingBind {
		t.Errorf("root after a binding login in no granting group = %+v, want still pending", u)
	}

	u, err := r.client(r.admin).UpdateUser(ctx, "dev", sdk.UserUpdate{BindSSO: ptr(true)})
	if err != nil || u.SSO || !u.SSOBindAllowed {
		t.Fatalf("allow dev's binding = %+v, %v", u, err)
	}
	if r.audited("user.update", "root", "dev") != 1 {
		t.Errorf("allowing the binding is not audited as user.update")
	}
	cred := r.mustLogin("dev")
	if u := r.user("dev"); u.Subject != r.op.Subject("dev") {
		t.Errorf("dev after the allowed login = %+v, want bound to %s", u, r.op.Subject("dev"))
	}
	if r.audited("user.bind", ssoActor, "dev") != 1 {
		t.Errorf("the binding is not audited as user.bind by sso")
	}
	if got := r.members("dev"); !slices.Equal(got, []string{"default:developer:", "ml:developer:group"}) {
		t.Errorf("dev after binding = %v", got)
	}
	if _, err := r.refresh(cred); err != nil {
		t.Errorf("renewal of the bound login: %v", err)
	}
	_, err = r.client(r.admin).UpdateUser(ctx, "dev", sdk.UserUpdate{BindSSO: ptr(true)})
	wantProblem(t, "allowing a bound user's binding", err, http.StatusConflict, "bound to a single sign-on account already")
	_, err = r.client(r.admin).UpdateUser(ctx, "dev", sdk.UserUpdate{ServiceAccount: ptr(true)})
	wantProblem(t, "making an SSO user a service account", err, http.StatusBadRequest, "a service account cannot log in with single sign-on")

	// A service account: never bound.
	bot := store.User{Name: "bot", ServiceAccount: true, CreatedAt: time.Now()}
	if err := r.st.CreateUser(ctx, &bot); err != nil {
		t.Fatal(err)
	}
	_, err = r.client(r.admin).UpdateUser(ctx, "bot", sdk.UserUpdate{BindSSO: ptr(true)})
	wantProblem(t, "allowing a service account's binding", err, http.StatusBadRequest, "a service account cannot log in with single sign-on")
	r.op.AddUser("bot", password, grpGPU)
	_, err = r.login("bot")
	wantProblem(t, "a login under a service account's name", err, http.StatusForbidden, "service account")
	if u := r.user("bot"); u.Subject != "" {
		t.Errorf("bot after its login was refused = %+v, want unbound", u)
	}

	// The audit log's actors are no user names.
	for _, name := range []string{ssoActor, systemActor, WarmPoolUser} {
		_, err := r.client(r.admin).CreateUser(ctx, sdk.UserCreate{Name: name})
		wantProblem(t, "creating the user "+name, err, http.StatusBadRequest, "reserved")
	}
	r.op.AddUser(ssoActor, password, grpGPU)
	_, err = r.login(ssoActor)
	wantProblem(t, "a login named sso", err, http.StatusForbidden, "cannot take as a user name")
	if _, err := r.st.UserByName(ctx, ssoActor); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a user named sso: %v", err)
	}
}

// A refresh token the provider refuses (invalid_grant: a password change,
// an expired or reused token, a session revoked there) ends that one
// login and nothing else: it says nothing about the person's other logins,
// tokens or sessions, which answer for themselves. When the provider does
// answer and grants the person nothing any more (they left every granting
// group), their access goes at once, whatever it was made of: group-made
// memberships, every other login, every token (API tokens too) and every
// session, audited as access.cut by sso.
func TestSSOProviderRefusalCutsEverything(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("alice", password, grpGPU, grpMLDevs)
	first, second := r.mustLogin("alice"), r.mustLogin("alice")
	api, err := r.client(first.Token).CreateToken(ctx, sdk.TokenCreate{Name: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := r.client(api.Secret).CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.op.DisableUser("alice")
	_, err = r.refresh(first)
	wantProblem(t, "a renewal the provider refuses", err, http.StatusUnauthorized)
	if l := r.ssoLogin(first.RefreshToken); l.EndReason != endRevoked {
		t.Errorf("alice's refused login = %+v, want ended %q", l, endRevoked)
	}
	if l := r.ssoLogin(second.RefreshToken); !l.EndedAt.IsZero() {
		t.Errorf("alice's other login = %+v, want it left to its own re-check", l)
	}
	for what, tok := range map[string]string{"the API token": api.Secret, "the other login's credential": second.Token} {
		if _, err := r.client(tok).Whoami(ctx); err != nil {
			t.Errorf("%s after one refresh token of alice's was refused: %v, want it to work", what, err)
		}
	}
	if got, err := r.st.Session(ctx, sess.ID); err != nil || got.State == sdk.StateEnded || got.State == sdk.StateStopping {
		t.Errorf("alice's session after one refresh token was refused: %+v %v, want it running", got, err)
	}

	// Out of every granting group.
	r.op.AddUser("bob", password, grpGPU)
	cred := r.mustLogin("bob")
	api, err = r.client(cred.Token).CreateToken(ctx, sdk.TokenCreate{Name: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("bob")
	_, err = r.refresh(cred)
	wantProblem(t, "a renewal in no granting group", err, http.StatusForbidden, "none of the groups")
	if _, err := r.client(api.Secret).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("bob's API token after he left every group: %v, want 401", err)
	}
}

// failMintStore fails the next token creation once fail is set: the
// group-sync transaction of a renewal, after the provider refresh token
// was redeemed.
type failMintStore struct {
	store.Store
	fail *atomic.Bool
}

func (f failMintStore) InTx(ctx context.Context, fn func(store.Store) error) error {
	return f.Store.InTx(ctx, func(tx store.Store) error { return fn(failMintStore{tx, f.fail}) })
}

func (f failMintStore) CreateToken(ctx context.Context, t *store.Token) error {
	if f.fail.CompareAndSwap(true, false) {
		return errors.New("injected: the database went away")
	}
	return f.Store.CreateToken(ctx, t)
}

// A redeemed provider refresh token is stored at once: the provider
// rotates them, so a renewal whose transaction fails afterwards must not
// leave the spent one stored (the next renewal would read the provider's
// refusal as a revocation and cut the person).
func TestSSOProviderRefreshKeptWhenSyncFails(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	r := newSSORig(t, ssoRigOpts{wrap: func(st store.Store) store.Store { return failMintStore{st, &fail} }})
	r.op.AddUser("kim", password, grpGPU)
	cred := r.mustLogin("kim")
	spent := r.ssoLogin(cred.RefreshToken).ProviderRefresh
	fail.Store(true)
	if _, err := r.refresh(cred); err == nil {
		t.Fatal("a renewal whose transaction failed succeeded")
	}
	if fail.Load() {
		t.Fatal("the renewal did not reach its transaction")
	}
	if l := r.ssoLogin(cred.RefreshToken); bytes.Equal(l.ProviderRefresh, spent) || !l.EndedAt.IsZero() {
		t.Errorf("login after the failed renewal = %+v, want the provider's new refresh token stored", l)
	}
	if _, err := r.refresh(cred); err != nil {
		t.Errorf("the renewal after a failed one: %v", err)
	}
}

// A first login whose groups grant only a project devgpu does not have is
// refused with a sentence naming it, and makes no user.
func TestSSOFirstLoginMissingProject(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{mappings: []sso.ProjectMapping{{Group: "ghost-users", Project: "ghost", Role: store.RoleDeveloper}}})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("zed", password, "ghost-users")
	_, err := r.login("zed")
	wantProblem(t, "a first login granted only a missing project", err, http.StatusForbidden,
		"the group ghost-users grants project ghost, which does not exist in devgpu; ask an administrator to create it or fix oidc.projects")
	if _, err := r.st.UserByName(ctx, "zed"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("zed after the refused first login: %v, want no user", err)
	}
	if r.audited("auth.refused", ssoActor, "zed") != 1 {
		t.Errorf("the refused first login is not audited as auth.refused by sso")
	}
}

// Single sign-on seals the provider refresh tokens with the agent key: a
// server without a persistent one does not start.
func TestSSONeedsAgentKey(t *testing.T) {
	t.Parallel()
	op := oidcop.Start(t, oidcop.Options{})
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := sqlite.Open(ctx, filepath.Join(testutil.ShortTempDir(t), "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt := inproc.New(inproc.NewRegistry(testutil.ShortTempDir(t)))
	_, err = New(ctx, Config{Store: st, Exclusive: true, Backends: []Backend{{Name: "local", Runtime: rt}},
		OIDC: &sso.Config{Issuer: op.Issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes, AdminGroups: []string{grpAdmins}}})
	if err == nil || !strings.Contains(err.Error(), "persistent agent key") {
		t.Fatalf("New with single sign-on and no agent key: %v, want refused", err)
	}
}

// A CLI whose credential no longer works ends its sign-in with the
// sign-in's refresh secret.
func TestSSOLogoutByRefreshSecret(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("lou", password, grpGPU)
	cred := r.mustLogin("lou")
	if err := r.client("").Logout(ctx, cred.RefreshToken); err != nil {
		t.Fatalf("logout by refresh secret: %v", err)
	}
	if l := r.ssoLogin(cred.RefreshToken); l.EndReason != endLoggedOut {
		t.Errorf("login after logout by refresh secret = %+v, want ended %q", l, endLoggedOut)
	}
	if _, err := r.client(cred.Token).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("the credential after logout: %v, want 401", err)
	}
	if r.audited("auth.end", "lou", "lou") != 1 {
		t.Errorf("logout by refresh secret is not audited as auth.end")
	}
	// Its ended credential as bearer, and the secret again: nothing to do.
	if err := r.client(cred.Token).Logout(ctx, cred.RefreshToken); err != nil {
		t.Errorf("a second logout: %v", err)
	}
	err := r.client("").Logout(ctx, "dgr_unknown")
	wantProblem(t, "logout with an unknown refresh secret", err, http.StatusUnauthorized, "devgpu login")
	err = r.client("").Logout(ctx, "")
	wantProblem(t, "logout with neither credential nor secret", err, http.StatusUnauthorized)
}

// The sign-in endpoints that need no credential answer 429 with
// Retry-After once an address used its burst.
func TestSSOAuthRateLimit(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{limited: true})
	// The limiter's clock stands still: under load the burst would
	// otherwise refill while it is spent.
	frozen := time.Now()
	r.srv.authLimit.now = func() time.Time { return frozen }
	post := func(path string) *http.Response {
		t.Helper()
		resp, err := http.Post(r.url+path, "application/json", strings.NewReader(`{"refresh_token":"dgr_guess"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range authBurst {
		if resp := post("/api/v1/auth/oidc"); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("login %d of the burst: %d, want 400 (no ID token)", i, resp.StatusCode)
		}
	}
	resp := post("/api/v1/auth/oidc")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a login past the burst: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// Not renewals and logouts, which name a secret and call no provider:
	// someone flooding logins from behind the same proxy must not stop
	// everyone's renewals.
	for _, path := range []string{"/api/v1/auth/refresh", "/api/v1/auth/logout"} {
		if resp := post(path); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s past the login burst: %d, want 401 (unknown secret)", path, resp.StatusCode)
		}
	}
	resp, err := http.Get(r.url + "/api/v1/auth/config")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("auth config past the burst: %d", resp.StatusCode)
	}
}

// The limiter remembers a bounded number of addresses: idle ones go
// first (their bucket is full again), then the least recently seen.
func TestAuthLimiterBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newAuthLimiter(func() time.Time { return now })
	l.max = 3
	for i := range authBurst {
		if ok, _ := l.allow("a"); !ok {
			t.Fatalf("request %d of a's burst refused", i)
		}
	}
	ok, wait := l.allow("a")
	if ok || wait <= 0 || wait > time.Minute {
		t.Fatalf("a past its burst: %v %v, want refused for up to a minute", ok, wait)
	}
	now = now.Add(time.Second)
	l.allow("b")
	now = now.Add(time.Second)
	l.allow("c")
	now = now.Add(time.Second)
	l.allow("d") // full: a, the least recently seen, goes
	if len(l.addrs) != 3 || l.addrs["a"] != nil {
		t.Errorf("addresses = %v, want b, c, d", len(l.addrs))
	}
	now = now.Add(time.Hour)
	l.allow("e") // all idle: they all go
	if len(l.addrs) != 1 {
		t.Errorf("after an hour, %d addresses remembered, want 1", len(l.addrs))
	}
}

// failCheckStore fails, once fail is set, the next write of a login that
// moves its CheckedAt: the group-sync transaction of the leader's
// re-check (keeping the provider's new refresh token does not move it).
type failCheckStore struct {
	store.Store
	fail *atomic.Bool
}

func (f failCheckStore) InTx(ctx context.Context, fn func(store.Store) error) error {
	return f.Store.InTx(ctx, func(tx store.Store) error { return fn(failCheckStore{tx, f.fail}) })
}

func (f failCheckStore) UpdateSSOLogin(ctx context.Context, l store.SSOLogin) error {
	if cur, err := f.Store.SSOLoginByRefreshHash(ctx, l.RefreshHash); err == nil && !cur.CheckedAt.Equal(l.CheckedAt) &&
		l.EndedAt.IsZero() && f.fail.CompareAndSwap(true, false) {
		return errors.New("injected: the database went away")
	}
	return f.Store.UpdateSSOLogin(ctx, l)
}

// The leader's re-check keeps the provider's new refresh token even when
// its sync transaction fails: the login survives the next re-check.
func TestSSORecheckKeepsProviderRefreshWhenSyncFails(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	const interval = 200 * time.Millisecond
	r := newSSORig(t, ssoRigOpts{recheck: interval, wrap: func(st store.Store) store.Store { return failCheckStore{st, &fail} }})
	r.op.AddUser("ned", password, grpGPU)
	fail.Store(true)
	cred := r.mustLogin("ned")
	testutil.Eventually(t, testutil.WaitMedium, "a re-check's sync to fail", func() bool { return !fail.Load() })
	failedAt := time.Now()
	testutil.Eventually(t, testutil.WaitMedium, "a later re-check to succeed", func() bool {
		l := r.ssoLogin(cred.RefreshToken)
		return !l.EndedAt.IsZero() || l.CheckedAt.After(failedAt)
	})
	if l := r.ssoLogin(cred.RefreshToken); !l.EndedAt.IsZero() {
		t.Errorf("the login after a re-check whose sync failed = %+v, want it kept", l)
	}
}

// An IPv6 host's whole /64 shares one limit; IPv4 addresses each have one.
func TestAuthLimitKey(t *testing.T) {
	for host, want := range map[string]string{
		"2001:db8:1:2:aaaa::1": "2001:db8:1:2::/64",
		"2001:db8:1:2:bbbb::9": "2001:db8:1:2::/64",
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "::ffff:192.0.2.7",
		"not an address":       "not an address",
	} {
		if got := limitKey(host); got != want {
			t.Errorf("limitKey(%q) = %q, want %q", host, got, want)
		}
	}
}
