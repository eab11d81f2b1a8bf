package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/runtime/local"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

// Groups of the test identity provider and what they grant.
const (
	grpAdmins  = "devgpu-admins" // organisation admins
	grpGPU     = "gpu-users"     // default: developer
	grpMLDevs  = "ml-devs"       // ml: developer
	grpMLLeads = "ml-leads"      // ml: admin
	password   = "secret-pw"
)

// ssoRig is a server on a real SQLite store and the local runtime whose
// identity provider is a real OpenID provider on loopback (oidcop), with
// projects "default" (long detach grace) and "ml", an organisation admin
// root (API token) and a person "dev" made by hand (API token, developer
// of default).
type ssoRig struct {
	t     *testing.T
	op    *oidcop.OP
	st    store.Store
	srv   *Server
	url   string
	https *http.Client // the client of url when it is https (ssoRigOpts.tls)
	admin string       // root's API token
	dev   string       // dev's API token
}

type ssoRigOpts struct {
	recheck time.Duration    // RecheckInterval (default an hour: no re-check)
	now     func() time.Time // the server's clock
	ttl     time.Duration    // SessionTTL (default sso's)
	// wrap, if set, is the store the server uses around the rig's.
	wrap func(store.Store) store.Store
	// limited keeps the sign-in endpoints' per-address limit.
	limited bool
	// mappings are group mappings besides the rig's.
	mappings []sso.ProjectMapping
	// web makes the server's client the provider's confidential web
	// client (with its secret), as the web console's sign-in uses it,
	// and the server's own URL its public URL; tls serves it over https.
	web, tls bool
}

func newSSORig(t *testing.T, o ssoRigOpts) *ssoRig {
	t.Helper()
	op := oidcop.Start(t, oidcop.Options{})
	bin := testutil.Binary(t) // built before the deadline: on a loaded machine the link alone takes half a minute
	dir := testutil.ShortTempDir(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	devs, _ := hostgpu.Simulated("t4:4")
	rt, err := local.New(local.Config{Dir: filepath.Join(dir, "s"), Devices: devs, AgentCommand: []string{bin, "agent"}})
	if err != nil {
		t.Fatal(err)
	}
	r := &ssoRig{t: t, op: op, st: st}
	now := time.Now()
	if r.admin, err = Bootstrap(ctx, st, "root", true, false, now); err != nil {
		t.Fatal(err)
	}
	p, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	p.Settings.DetachGrace = ptr(sdk.Duration(time.Hour))
	if err := st.UpdateProject(ctx, &p); err != nil {
		t.Fatal(err)
	}
	ml := store.Project{Name: "ml", CreatedAt: now, UpdatedAt: now}
	if err := st.CreateProject(ctx, &ml); err != nil {
		t.Fatal(err)
	}
	dev := store.User{Name: "dev", CreatedAt: now}
	if err := st.CreateUser(ctx, &dev); err != nil {
		t.Fatal(err)
	}
	if r.dev, _, err = NewToken(ctx, st, dev.ID, "test", now, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: dev.ID, Role: store.RoleDeveloper}); err != nil {
		t.Fatal(err)
	}
	recheck := o.recheck
	if recheck == 0 {
		recheck = time.Hour
	}
	srvStore := store.Store(st)
	if o.wrap != nil {
		srvStore = o.wrap(st)
	}
	cfg := Config{Store: srvStore, Backends: []Backend{{Name: "local", Runtime: rt}}, LivenessInterval: time.Hour, Exclusive: true, Now: o.now,
		AgentKey: processKey(), // single sign-on needs one given
		OIDC: &sso.Config{
			Issuer: op.Issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes,
			AdminGroups: []string{grpAdmins},
			Projects: append([]sso.ProjectMapping{
				{Group: grpGPU, Project: "default", Role: store.RoleDeveloper},
				{Group: grpMLDevs, Project: "ml", Role: store.RoleDeveloper},
				{Group: grpMLLeads, Project: "ml", Role: store.RoleAdmin},
			}, o.mappings...),
			RecheckInterval: recheck,
			SessionTTL:      o.ttl,
		}}
	var hs *httptest.Server
	if o.web {
		cfg.OIDC.ClientID, cfg.OIDC.ClientSecret = oidcop.WebClientID, oidcop.WebClientSecret
		// The web sign-in's redirect URI is under the public URL: the
		// listener's, known before the server is made.
		hs = httptest.NewUnstartedServer(nil)
		cfg.PublicURL = listenerURL(hs, o.tls)
	}
	if r.srv, err = New(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !o.limited {
		r.srv.authLimit = nil // tests log in more often than people
	}
	if hs != nil {
		r.url, r.https = serveAt(t, hs, o.tls, r.srv, rt)
	} else {
		r.url = serveHTTP(t, r.srv, rt)
	}
	return r
}

func (r *ssoRig) client(token string) *sdk.Client {
	c, err := sdk.NewClient(r.url, token)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// tokens logs the person in at the provider (authorization code with
// PKCE and a nonce, through its login form).
func (r *ssoRig) tokens(client, user string) oidcop.Tokens {
	r.t.Helper()
	tk, err := r.op.Login(testutil.Context(r.t, testutil.WaitMedium), client, user, password)
	if err != nil {
		r.t.Fatalf("log %s in at the provider: %v", user, err)
	}
	return tk
}

// login logs the person in to devgpu with the browser flow.
func (r *ssoRig) login(user string) (sdk.Credential, error) {
	r.t.Helper()
	tk := r.tokens(oidcop.CLIClientID, user)
	return r.client("").LoginOIDC(testutil.Context(r.t, testutil.WaitMedium), sdk.OIDCLogin{
		IDToken: tk.IDToken, RefreshToken: tk.RefreshToken, Nonce: tk.Nonce, Flow: sdk.FlowBrowser})
}

func (r *ssoRig) mustLogin(user string) sdk.Credential {
	r.t.Helper()
	cred, err := r.login(user)
	if err != nil {
		r.t.Fatalf("login of %s: %v", user, err)
	}
	return cred
}

func (r *ssoRig) refresh(cred sdk.Credential) (sdk.Credential, error) {
	return r.client("").Refresh(testutil.Context(r.t, testutil.WaitMedium), cred.RefreshToken)
}

func (r *ssoRig) user(name string) store.User {
	r.t.Helper()
	u, err := r.st.UserByName(context.Background(), name)
	if err != nil {
		r.t.Fatalf("user %s: %v", name, err)
	}
	return u
}

// members is the user's memberships as "project:role:source".
func (r *ssoRig) members(name string) []string {
	r.t.Helper()
	ms, err := r.st.ListUserMembers(context.Background(), r.user(name).ID)
	if err != nil {
		r.t.Fatal(err)
	}
	out := []string{}
	for _, m := range ms {
		out = append(out, m.Project+":"+m.Role+":"+m.Source)
	}
	return out
}

// audited reports whether the audit log has an event of action by actor
// on target.
func (r *ssoRig) audited(action, actor, target string) int {
	r.t.Helper()
	events, err := r.st.ListAudit(context.Background(), store.AuditFilter{})
	if err != nil {
		r.t.Fatal(err)
	}
	n := 0
	for _, e := range events {
		if e.Action == action && e.Actor == actor && e.Target == target {
			n++
		}
	}
	return n
}

func (r *ssoRig) ssoLogin(hash string) store.SSOLogin {
	r.t.Helper()
	sum := sha256.Sum256([]byte(hash))
	l, err := r.st.SSOLoginByRefreshHash(context.Background(), sum[:])
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// wantProblem checks that err is the server's answer with status whose
// sentence contains each of parts.
func wantProblem(t *testing.T, what string, err error, status int, parts ...string) {
	t.Helper()
	var e *sdk.Error
	if !errors.As(err, &e) {
		t.Errorf("%s: %v, want a %d problem", what, err, status)
		return
	}
	if e.Status != status {
		t.Errorf("%s: %d %q, want %d", what, e.Status, e.Problem.Detail, status)
	}
	for _, p := range parts {
		if !strings.Contains(e.Problem.Detail, p) {
			t.Errorf("%s: %q does not say %q", what, e.Problem.Detail, p)
		}
	}
}

// The first login creates the user (audited, actor sso), binds them to
// the provider's subject, grants what their groups give, and answers a
// credential that works until its expiry; whoami tells all of it. A
// second login creates nobody.
func TestSSOJustInTimeUser(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	cfg, err := r.client("").AuthConfig(ctx)
	if err != nil || cfg.OIDC == nil || cfg.OIDC.Issuer != r.op.Issuer || cfg.OIDC.ClientID != oidcop.CLIClientID || cfg.SSORequired {
		t.Fatalf("auth config = %+v, %v", cfg, err)
	}
	r.op.AddUser("alice", password, grpGPU, grpMLDevs)
	before := time.Now()
	cred := r.mustLogin("alice")
	if cred.User != "alice" || cred.Token == "" || cred.RefreshToken == "" {
		t.Fatalf("credential = %+v", cred)
	}
	if cred.ExpiresAt.Before(before.Add(sso.DefaultSessionTTL-time.Minute)) || cred.ExpiresAt.After(time.Now().Add(sso.DefaultSessionTTL)) {
		t.Errorf("credential expires %v, want in %v", cred.ExpiresAt, sso.DefaultSessionTTL)
	}
	u := r.user("alice")
	if u.Subject == "" || u.OrgAdmin || u.Disabled {
		t.Errorf("alice = %+v, want bound to a subject, no admin", u)
	}
	if got, want := r.members("alice"), []string{"default:developer:group", "ml:developer:group"}; !slices.Equal(got, want) {
		t.Errorf("alice's memberships = %v, want %v", got, want)
	}
	if r.audited("user.create", ssoActor, "alice") != 1 || r.audited("auth.login", "alice", "alice") != 1 {
		t.Errorf("the first login is not audited as user.create by sso and auth.login")
	}
	if r.audited("member.set", ssoActor, "alice") != 2 {
		t.Errorf("the group memberships are not audited as member.set by sso")
	}
	w, err := r.client(cred.Token).Whoami(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w.User != "alice" || w.Auth != sdk.AuthSSO || w.OrgAdmin || w.ServiceAccount || w.ExpiresAt == nil || !w.ExpiresAt.Equal(cred.ExpiresAt) {
		t.Errorf("whoami = %+v", w)
	}
	if !slices.Equal(w.Groups, []string{grpGPU, grpMLDevs}) {
		t.Errorf("whoami groups = %v", w.Groups)
	}
	wantProjects := []sdk.WhoamiProject{{Name: "default", Role: "developer", Source: "group"}, {Name: "ml", Role: "developer", Source: "group"}}
	if !slices.Equal(w.Projects, wantProjects) {
		t.Errorf("whoami projects = %+v, want %+v", w.Projects, wantProjects)
	}
	users, err := r.client(r.admin).Users(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if (u.Name == "alice") != u.SSO {
			t.Errorf("user %s: SSO %v", u.Name, u.SSO)
		}
	}
	// An API token's whoami.
	w, err = r.client(r.dev).Whoami(ctx)
	if err != nil || w.Auth != sdk.AuthToken || w.ExpiresAt != nil || len(w.Groups) != 0 ||
		!slices.Equal(w.Projects, []sdk.WhoamiProject{{Name: "default", Role: "developer"}}) {
		t.Errorf("dev's whoami = %+v, %v", w, err)
	}
	// Again: the same user, no second creation.
	cred2 := r.mustLogin("alice")
	if cred2.Token == cred.Token || r.audited("user.create", ssoActor, "alice") != 1 || r.audited("auth.login", "alice", "alice") != 2 {
		t.Errorf("a second login made another user or was not audited")
	}
	if r.user("alice").ID != u.ID {
		t.Errorf("a second login made another user")
	}
}

// A group makes an organisation admin, and leaving it takes the right
// away at the next renewal, with the sessions of projects used as an
// admin only; an admin made by hand stays one whatever the groups say.
func TestSSOGroupOrgAdmin(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("bob", password, grpAdmins, grpMLDevs)
	cred := r.mustLogin("bob")
	if u := r.user("bob"); !u.OrgAdmin || !u.OrgAdminFromGroups {
		t.Fatalf("bob = %+v, want an org admin from groups", u)
	}
	if _, err := r.client(cred.Token).Users(ctx); err != nil {
		t.Errorf("bob as org admin lists users: %v", err)
	}
	// A session in default, which bob uses as an org admin only.
	sess, err := r.client(cred.Token).CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("bob", grpMLDevs)
	if cred, err = r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	if u := r.user("bob"); u.OrgAdmin || u.OrgAdminFromGroups {
		t.Errorf("bob after leaving the admin group = %+v, want no admin", u)
	}
	if s := waitStoreSession(t, r.st, sess.ID, "to end", func(s store.Session) bool { return s.State == sdk.StateEnded }); s.EndReason != sdk.ReasonRevoked {
		t.Errorf("bob's session in default after he left the admin group ended %q, want revoked", s.EndReason)
	}
	if _, err := r.client(cred.Token).Users(ctx); statusOf(err) != http.StatusForbidden {
		t.Errorf("bob lists users after leaving the admin group: %v, want 403", err)
	}
	if r.audited("user.update", ssoActor, "bob") != 2 {
		t.Errorf("the admin right's grant and removal are not audited as user.update by sso")
	}

	// carol is an admin made by hand; she logs in with SSO for the first
	// time once an administrator allowed it (bound to her subject), joins
	// and leaves the admin group.
	carol := store.User{Name: "carol", OrgAdmin: true, CreatedAt: time.Now()}
	if err := r.st.CreateUser(ctx, &carol); err != nil {
		t.Fatal(err)
	}
	r.op.AddUser("carol", password, grpGPU)
	if _, err := r.client(r.admin).UpdateUser(ctx, "carol", sdk.UserUpdate{BindSSO: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	cred = r.mustLogin("carol")
	if r.audited("user.bind", ssoActor, "carol") != 1 {
		t.Errorf("carol's binding is not audited as user.bind by sso")
	}
	if u := r.user("carol"); !u.OrgAdmin || u.OrgAdminFromGroups || u.Subject == "" {
		t.Fatalf("carol = %+v, want a hand-made admin bound to her subject", u)
	}
	r.op.SetGroups("carol", grpAdmins)
	if cred, err = r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("carol", grpGPU)
	if _, err = r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	if u := r.user("carol"); !u.OrgAdmin || u.OrgAdminFromGroups {
		t.Errorf("carol after joining and leaving the admin group = %+v, want still an admin made by hand", u)
	}
}

// Groups make project memberships with their role; renewals follow the
// groups; a membership made by hand is never touched by the sync, and
// setting a group-made one by hand makes it hand-made.
func TestSSOGroupProjects(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("dave", password, grpMLDevs)
	cred := r.mustLogin("dave")
	if got := r.members("dave"); !slices.Equal(got, []string{"ml:developer:group"}) {
		t.Fatalf("dave = %v", got)
	}
	r.op.SetGroups("dave", grpMLDevs, grpMLLeads)
	cred, err := r.refresh(cred)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.members("dave"); !slices.Equal(got, []string{"ml:admin:group"}) {
		t.Errorf("dave in ml-devs and ml-leads = %v, want ml admin", got)
	}
	// A membership by hand in default, as admin.
	if _, err := r.client(r.admin).SetMember(ctx, "default", "dave", store.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	members, err := r.client(r.admin).Members(ctx, "ml")
	if err != nil || len(members) != 1 || members[0].Source != "group" {
		t.Errorf("ml's members = %+v, %v; want dave from a group", members, err)
	}
	// gpu-users maps default to developer: the hand-made admin stays.
	r.op.SetGroups("dave", grpGPU)
	if cred, err = r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	if got := r.members("dave"); !slices.Equal(got, []string{"default:admin:"}) {
		t.Errorf("dave after moving to gpu-users = %v, want only the hand-made default admin", got)
	}
	if r.audited("member.remove", ssoActor, "dave") != 1 {
		t.Errorf("the group membership's removal is not audited as member.remove by sso")
	}
	// In no group at all: the hand-made membership keeps him in.
	r.op.SetGroups("dave")
	if cred, err = r.refresh(cred); err != nil {
		t.Fatalf("dave in no group but with a hand-made membership: %v", err)
	}
	// Set by hand, a group-made membership becomes hand-made.
	r.op.SetGroups("dave", grpMLDevs)
	if cred, err = r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client(r.admin).SetMember(ctx, "ml", "dave", store.RoleDeveloper); err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("dave")
	if _, err = r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	if got := r.members("dave"); !slices.Equal(got, []string{"default:admin:", "ml:developer:"}) {
		t.Errorf("dave after leaving ml-devs whose membership was set by hand = %v", got)
	}
}

// A renewal answers a new credential and refresh secret: the old token is
// revoked and the old secret refused; logout ends the login.
func TestSSORefreshAndLogout(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("erin", password, grpGPU)
	first := r.mustLogin("erin")
	second, err := r.refresh(first)
	if err != nil {
		t.Fatal(err)
	}
	if second.Token == first.Token || second.RefreshToken == first.RefreshToken || second.User != "erin" {
		t.Fatalf("renewal = %+v", second)
	}
	if _, err := r.client(first.Token).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("the renewed token: %v, want 401", err)
	}
	if _, err := r.client(second.Token).Whoami(ctx); err != nil {
		t.Errorf("the new token: %v", err)
	}
	_, err = r.refresh(first)
	wantProblem(t, "a refresh secret used already", err, http.StatusUnauthorized, "devgpu login")
	if err := r.client(second.Token).Logout(ctx, ""); err != nil {
		t.Fatal(err)
	}
	_, err = r.client(second.Token).Whoami(ctx)
	wantProblem(t, "the token after logout", err, http.StatusUnauthorized, "devgpu login")
	_, err = r.refresh(second)
	wantProblem(t, "a renewal after logout", err, http.StatusUnauthorized, "your sign-in ended (logged out)", "devgpu login")
	if r.audited("auth.end", "erin", "erin") != 1 {
		t.Errorf("logout is not audited as auth.end")
	}
	// An API token's logout does nothing.
	if err := r.client(r.dev).Logout(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client(r.dev).Whoami(ctx); err != nil {
		t.Errorf("an API token after its logout: %v", err)
	}
}

// Leaving the group of a project, seen at a renewal, removes the
// membership and ends the person's session there (revoked).
func TestSSOGroupRemovalOnRefreshCutsSession(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("frank", password, grpGPU)
	cred := r.mustLogin("frank")
	sess, err := r.client(cred.Token).CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("frank", grpMLDevs)
	if _, err := r.refresh(cred); err != nil {
		t.Fatal(err)
	}
	if got := r.members("frank"); !slices.Equal(got, []string{"ml:developer:group"}) {
		t.Errorf("frank = %v", got)
	}
	s := waitStoreSession(t, r.st, sess.ID, "to end", func(s store.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonRevoked {
		t.Errorf("session end reason %q, want revoked", s.EndReason)
	}
}

// The leader re-checks every login each RecheckInterval: leaving a group
// takes effect without the person renewing (membership removed, session
// cut), and a person the provider disabled has their login ended, token
// revoked and renewal refused.
func TestSSORecheckByLeader(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{recheck: 300 * time.Millisecond})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("gina", password, grpGPU, grpMLDevs)
	cred := r.mustLogin("gina")
	sess, err := r.client(cred.Token).CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.op.SetGroups("gina", grpMLDevs)
	testutil.Eventually(t, testutil.WaitMedium, "the re-check to remove gina from default", func() bool {
		return slices.Equal(r.members("gina"), []string{"ml:developer:group"})
	})
	s := waitStoreSession(t, r.st, sess.ID, "to end", func(s store.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonRevoked {
		t.Errorf("session end reason %q, want revoked", s.EndReason)
	}
	if _, err := r.client(cred.Token).Whoami(ctx); err != nil {
		t.Errorf("gina's credential after the re-check (still in ml-devs): %v", err)
	}

	r.op.DisableUser("gina")
	testutil.Eventually(t, testutil.WaitMedium, "the re-check to end gina's login", func() bool {
		return !r.ssoLogin(cred.RefreshToken).EndedAt.IsZero()
	})
	if l := r.ssoLogin(cred.RefreshToken); l.EndReason != endRevoked {
		t.Errorf("end reason %q, want %q", l.EndReason, endRevoked)
	}
	_, err = r.client(cred.Token).Whoami(ctx)
	wantProblem(t, "the credential of a login the provider refused", err, http.StatusUnauthorized)
	_, err = r.refresh(cred)
	wantProblem(t, "a renewal of a login ended by the re-check", err, http.StatusUnauthorized, "your sign-in ended", "devgpu login")
	if r.audited("auth.end", ssoActor, "gina") != 1 {
		t.Errorf("the end is not audited as auth.end by sso")
	}
}

// A person disabled at the provider is refused at renewal; a person
// disabled in devgpu cannot log in whatever the provider says.
func TestSSODisabledRefused(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("hank", password, grpGPU)
	cred := r.mustLogin("hank")
	r.op.DisableUser("hank")
	_, err := r.refresh(cred)
	wantProblem(t, "a renewal of a person the provider disabled", err, http.StatusUnauthorized, "log in again")
	if _, err := r.client(cred.Token).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("the credential after the provider refused the renewal: %v, want 401", err)
	}

	r.op.AddUser("ivy", password, grpGPU)
	cred = r.mustLogin("ivy")
	if _, err := r.client(r.admin).UpdateUser(ctx, "ivy", sdk.UserUpdate{Disabled: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	_, err = r.login("ivy")
	wantProblem(t, "a login of a user disabled in devgpu", err, http.StatusForbidden, "user ivy is disabled in devgpu; ask an administrator to enable them")
	if r.audited("auth.refused", ssoActor, "ivy") != 1 {
		t.Errorf("the refused login of a disabled user is not audited as auth.refused by sso")
	}
	_, err = r.refresh(cred)
	wantProblem(t, "a renewal of a user disabled in devgpu", err, http.StatusForbidden, "disabled in devgpu")
}

// ID tokens that must not be taken: tampered, for another client, with
// a wrong or missing nonce, of a person in no mapped group (not created),
// without a refresh token; a person the provider names after another
// account's user.
func TestSSOBadTokensRefused(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("jack", password, grpGPU)
	tk := r.tokens(oidcop.CLIClientID, "jack")
	post := func(l sdk.OIDCLogin) error {
		_, err := r.client("").LoginOIDC(ctx, l)
		return err
	}
	good := sdk.OIDCLogin{IDToken: tk.IDToken, RefreshToken: tk.RefreshToken, Nonce: tk.Nonce, Flow: sdk.FlowBrowser}

	tampered := good
	parts := strings.Split(tk.IDToken, ".")
	sig := []byte(parts[2])
	// Another base64url character: the token still decodes, and its
	// signature no longer matches.
	if sig[len(sig)/2] == 'A' {
		sig[len(sig)/2] = 'B'
	} else {
		sig[len(sig)/2] = 'A'
	}
	tampered.IDToken = parts[0] + "." + parts[1] + "." + string(sig)
	wantProblem(t, "a tampered ID token", post(tampered), http.StatusUnauthorized, "signature")
	if r.audited("auth.refused", ssoActor, unverified) != 1 {
		t.Errorf("the tampered ID token is not audited as auth.refused by sso of %s", unverified)
	}

	noNonce := good
	noNonce.Nonce = ""
	wantProblem(t, "a browser login without a nonce", post(noNonce), http.StatusUnauthorized, "nonce")
	wrongNonce := good
	wrongNonce.Nonce = "not-the-nonce"
	wantProblem(t, "a browser login with another nonce", post(wrongNonce), http.StatusUnauthorized, "nonce")

	noRefresh := good
	noRefresh.RefreshToken = ""
	wantProblem(t, "a login without a refresh token", post(noRefresh), http.StatusBadRequest, "offline_access")

	other := r.tokens(oidcop.OtherClientID, "jack")
	wantProblem(t, "an ID token for another client", post(sdk.OIDCLogin{IDToken: other.IDToken, RefreshToken: other.RefreshToken, Nonce: other.Nonce, Flow: sdk.FlowBrowser}),
		http.StatusUnauthorized, oidcop.OtherClientID, oidcop.CLIClientID)

	if _, err := r.st.UserByName(ctx, "jack"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused login created the user: %v", err)
	}
	if err := post(good); err != nil {
		t.Errorf("the good token after the refusals: %v", err)
	}

	r.op.AddUser("kim", password, "marketing")
	_, err := r.login("kim")
	wantProblem(t, "a person in no mapped group", err, http.StatusForbidden,
		"you are in none of the groups that grant access to devgpu ("+strings.Join([]string{grpAdmins, grpGPU, grpMLDevs, grpMLLeads}, ", ")+")")
	if _, err := r.st.UserByName(ctx, "kim"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a person in no mapped group was created: %v", err)
	}
	if r.audited("auth.refused", ssoActor, "kim") != 1 {
		t.Errorf("the refused login of a person in no mapped group is not audited as auth.refused by sso")
	}

	// A user bound to one account is refused to another that the provider
	// names the same: lena logs in, her subject is changed as if another
	// account had taken the name.
	r.op.AddUser("lena", password, grpGPU)
	r.mustLogin("lena")
	u := r.user("lena")
	u.Subject = "someone-else"
	if err := r.st.UpdateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	_, err = r.login("lena")
	wantProblem(t, "a login of another account with a bound user's name", err, http.StatusForbidden, "another account")
	if r.audited("auth.refused", ssoActor, "lena") != 1 {
		t.Errorf("the refused login of another account is not audited as auth.refused by sso")
	}
}

// An ID token past its expiry, by the server's clock, is refused with the
// clock-skew sentence.
func TestSSOExpiredTokenRefused(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{now: func() time.Time { return time.Now().Add(3 * time.Hour) }})
	r.op.AddUser("max", password, grpGPU)
	_, err := r.login("max")
	wantProblem(t, "an expired ID token", err, http.StatusUnauthorized, "expired", "clock")
}

// The provider out of reach: a login or renewal answers 503 and the
// credential stays as it is.
func TestSSOProviderUnreachable(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("nina", password, grpGPU)
	cred := r.mustLogin("nina")
	tk := r.tokens(oidcop.CLIClientID, "nina") // for a login while it is down
	r.op.Stop()
	_, err := r.refresh(cred)
	wantProblem(t, "a renewal while the provider is down", err, http.StatusServiceUnavailable, "cannot be reached")
	_, err = r.client("").LoginOIDC(ctx, sdk.OIDCLogin{IDToken: tk.IDToken, RefreshToken: tk.RefreshToken, Nonce: tk.Nonce, Flow: sdk.FlowBrowser})
	wantProblem(t, "a login while the provider is down", err, http.StatusServiceUnavailable)
	if _, err := r.client(cred.Token).Whoami(ctx); err != nil {
		t.Errorf("the credential while the provider is down: %v", err)
	}
	if l := r.ssoLogin(cred.RefreshToken); !l.EndedAt.IsZero() {
		t.Errorf("the login ended while the provider was down: %+v", l)
	}
}

// require_sso: refused on a server without an identity provider; with
// one, a person's API token is refused with the fix, a service account's
// token and an SSO credential work.
func TestSSORequired(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	status, body := f.call(f.admin, http.MethodPut, "/api/v1/org/policy", sdk.OrgPolicy{RequireSSO: true})
	if status != http.StatusBadRequest || !strings.Contains(string(body), "no identity provider configured") {
		t.Errorf("require_sso without oidc: %d %s, want 400", status, body)
	}

	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	admin := r.client(r.admin)
	// root's API token is a person's: turning require_sso on would lock
	// root out with this very request.
	_, err := admin.UpdateOrgPolicy(ctx, func(p sdk.OrgPolicy) (sdk.OrgPolicy, error) {
		p.RequireSSO = true
		return p, nil
	})
	wantProblem(t, "a person's API token turning require_sso on", err, http.StatusConflict,
		"turning on require_sso would refuse your own API token", "devgpu login URL", "service account")
	if org, err := admin.OrgPolicy(ctx); err != nil || org.RequireSSO {
		t.Fatalf("org policy after the refused change = %+v, %v", org, err)
	}
	if _, err := admin.UpdateUser(ctx, "root", sdk.UserUpdate{ServiceAccount: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	if r.audited("user.update", "root", "root") != 1 {
		t.Errorf("marking a service account is not audited")
	}
	if _, err := admin.UpdateOrgPolicy(ctx, func(p sdk.OrgPolicy) (sdk.OrgPolicy, error) {
		p.RequireSSO = true
		return p, nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = r.client(r.dev).Whoami(ctx)
	wantProblem(t, "a person's API token under require_sso", err, http.StatusUnauthorized, "requires single sign-on", "devgpu login", "service accounts")
	if w, err := admin.Whoami(ctx); err != nil || !w.ServiceAccount {
		t.Errorf("a service account's token under require_sso: %+v, %v", w, err)
	}
	r.op.AddUser("olga", password, grpGPU)
	cred := r.mustLogin("olga")
	if _, err := r.client(cred.Token).Whoami(ctx); err != nil {
		t.Errorf("an SSO credential under require_sso: %v", err)
	}
	if cfg, err := r.client("").AuthConfig(ctx); err != nil || !cfg.SSORequired {
		t.Errorf("auth config under require_sso = %+v, %v", cfg, err)
	}
	// A token an admin makes with an SSO credential (for a service
	// account) is no child of it: the renewal that revokes the
	// credential leaves it working.
	r.op.AddUser("paul", password, grpAdmins)
	paul := r.mustLogin("paul")
	created, err := r.client(paul.Token).CreateToken(ctx, sdk.TokenCreate{User: "root", Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.refresh(paul); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client(paul.Token).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("paul's renewed credential: %v, want 401", err)
	}
	if _, err := r.client(created.Secret).Whoami(ctx); err != nil {
		t.Errorf("the token paul made, after his renewal: %v", err)
	}
}

// waitStoreSession waits until the session satisfies cond.
func waitStoreSession(t *testing.T, st store.Store, id, what string, cond func(store.Session) bool) store.Session {
	t.Helper()
	var s store.Session
	testutil.Eventually(t, testutil.WaitMedium, "session "+id+" "+what, func() bool {
		var err error
		s, err = st.Session(context.Background(), id)
		return err == nil && cond(s)
	})
	return s
}

// The device authorization grant (no nonce) logs a person in as the
// browser flow does; the login records its flow.
func TestSSODeviceFlow(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("quinn", password, grpMLLeads)
	conf := r.op.OAuth2Config(oidcop.CLIClientID, "")
	da, err := conf.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	approved := make(chan error, 1)
	go func() { approved <- r.op.ApproveDevice(ctx, da.UserCode, "quinn", password) }()
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-approved; err != nil {
		t.Fatal(err)
	}
	tk := oidcop.TokensFrom(tok)
	cred, err := r.client("").LoginOIDC(ctx, sdk.OIDCLogin{IDToken: tk.IDToken, RefreshToken: tk.RefreshToken, Flow: sdk.FlowDevice})
	if err != nil {
		t.Fatal(err)
	}
	if l := r.ssoLogin(cred.RefreshToken); l.Flow != sdk.FlowDevice || !slices.Equal(l.Groups, []string{grpMLLeads}) {
		t.Errorf("login = %+v", l)
	}
	if got := r.members("quinn"); !slices.Equal(got, []string{"ml:admin:group"}) {
		t.Errorf("quinn = %v", got)
	}
	if u := r.user("quinn"); u.Subject != r.op.Subject("quinn") {
		t.Errorf("quinn bound to subject %q, want %q", u.Subject, r.op.Subject("quinn"))
	}
	w, err := r.client(cred.Token).Whoami(ctx)
	if err != nil || w.Auth != sdk.AuthSSO {
		t.Errorf("whoami = %+v, %v", w, err)
	}
}

// A provider that stays out of reach for more than three re-check
// intervals ends the logins it cannot confirm.
func TestSSOUncheckableLoginEnds(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{recheck: 200 * time.Millisecond})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("rita", password, grpGPU)
	cred := r.mustLogin("rita")
	r.op.Stop()
	testutil.Eventually(t, testutil.WaitMedium, "rita's login to end", func() bool {
		return !r.ssoLogin(cred.RefreshToken).EndedAt.IsZero()
	})
	if l := r.ssoLogin(cred.RefreshToken); l.EndReason != endNotRechecked || l.EndedAt.Sub(l.CheckedAt) < recheckMissedIntervals*200*time.Millisecond {
		t.Errorf("login = %+v, want ended %q after 3 intervals", l, endNotRechecked)
	}
	if _, err := r.client(cred.Token).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("the credential of a login that could not be re-checked: %v, want 401", err)
	}
}

// A login proves a live refresh token of the same person: the server
// redeems the one that came with the ID token. Another person's refresh
// token, or one used already, is refused; the groups are the ones the
// redemption answers; the provider out of reach answers 503.
func TestSSOLoginRedeemsRefreshToken(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("sam", password, grpGPU)
	r.op.AddUser("tess", password, grpGPU)
	post := func(tk oidcop.Tokens, refresh string) error {
		_, err := r.client("").LoginOIDC(ctx, sdk.OIDCLogin{IDToken: tk.IDToken, RefreshToken: refresh, Nonce: tk.Nonce, Flow: sdk.FlowBrowser})
		return err
	}
	sam, tess := r.tokens(oidcop.CLIClientID, "sam"), r.tokens(oidcop.CLIClientID, "tess")
	// sam's (stolen) ID token with tess's own refresh token.
	wantProblem(t, "an ID token with another person's refresh token", post(sam, tess.RefreshToken), http.StatusUnauthorized,
		"belongs to another account", "devgpu login URL")
	if _, err := r.st.UserByName(ctx, "sam"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused login created the user: %v", err)
	}
	if r.audited("auth.refused", ssoActor, "sam") != 1 {
		t.Errorf("an ID token with another person's refresh token is not audited as auth.refused by sso")
	}
	// A refresh token the provider rotated away.
	if _, err := r.op.Refresh(ctx, oidcop.CLIClientID, sam.RefreshToken); err != nil {
		t.Fatal(err)
	}
	wantProblem(t, "an ID token with a used refresh token", post(sam, sam.RefreshToken), http.StatusUnauthorized,
		errLoginRefreshRefused)
	if r.audited("auth.login", "sam", "sam") != 0 {
		t.Errorf("a refused login is audited as a login")
	}

	// The groups come from the redemption, not from the ID token.
	tk := r.tokens(oidcop.CLIClientID, "sam")
	r.op.SetGroups("sam", grpMLDevs)
	if err := post(tk, tk.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if got := r.members("sam"); !slices.Equal(got, []string{"ml:developer:group"}) {
		t.Errorf("sam's memberships = %v, want the groups the redemption answered (ml-devs)", got)
	}
	// The refresh token that came with the login was redeemed once: the
	// provider refuses it now (the server keeps the one it answered).
	if _, err := r.op.Refresh(ctx, oidcop.CLIClientID, tk.RefreshToken); err == nil {
		t.Errorf("the login's refresh token still works at the provider: the server did not redeem it")
	}

	// The provider out of reach after verifying the ID token (keys and
	// discovery cached): 503.
	tk = r.tokens(oidcop.CLIClientID, "tess")
	r.op.Stop()
	wantProblem(t, "a login while the provider is down", post(tk, tk.RefreshToken), http.StatusServiceUnavailable, "cannot be reached")
}

// The leader re-checks a login only while it grants something: a login
// whose credential expired and whose person has no session left is not
// redeemed (which would keep its provider refresh token alive for ever);
// one whose person still has a session is; a renewal of the expired one
// still works and re-checks the provider itself.
func TestSSORecheckOnlyWhileGranting(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	r := newSSORig(t, ssoRigOpts{recheck: 100 * time.Millisecond, ttl: ttl})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("uma", password, grpGPU)
	r.op.AddUser("vic", password, grpGPU)
	idle := r.mustLogin("uma")
	busy := r.mustLogin("vic")
	// vic's session runs on an API token of his (any session counts).
	apiToken, _, err := NewToken(ctx, r.st, r.user("vic").ID, "test", time.Now(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.client(apiToken).CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil); err != nil {
		t.Fatal(err)
	}
	expired := busy.ExpiresAt
	if idle.ExpiresAt.After(expired) {
		expired = idle.ExpiresAt
	}
	testutil.Eventually(t, testutil.WaitMedium, "both credentials to expire", func() bool { return time.Now().After(expired) })
	// vic's re-checks go on; they mark the leader's passes, which go over
	// the logins in turn. Two passes after the expiry, uma's login is left
	// as it is, and stays so for another pass.
	checked := func() time.Time { return r.ssoLogin(busy.RefreshToken).CheckedAt }
	pass := func() {
		t.Helper()
		last := checked()
		testutil.Eventually(t, testutil.WaitMedium, "a re-check of vic's login", func() bool { return checked().After(last) })
	}
	pass()
	pass()
	before := r.ssoLogin(idle.RefreshToken)
	pass()
	pass()
	if after := r.ssoLogin(idle.RefreshToken); !after.CheckedAt.Equal(before.CheckedAt) || !bytes.Equal(after.ProviderRefresh, before.ProviderRefresh) {
		t.Errorf("the leader re-checked uma's expired login without a session (checked %v, then %v)", before.CheckedAt, after.CheckedAt)
	}
	if !before.EndedAt.IsZero() {
		t.Errorf("uma's login ended: %+v", before)
	}
	// A renewal of the expired credential re-checks the provider: uma
	// left every group meanwhile, and is refused.
	r.op.SetGroups("uma")
	_, err = r.refresh(idle)
	wantProblem(t, "a renewal of an expired credential whose person left every group", err, http.StatusForbidden, "none of the groups")
}

// A renewal on another replica that redeemed the login's provider
// refresh token a moment before the leader, and has not stored the one
// the provider answered yet, makes the leader's re-check refused: that
// first refusal does not end the login; once the renewal stores its
// token, the re-checks go on with it.
func TestSSORecheckRefusalRacingRenewal(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{recheck: 100 * time.Millisecond})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.srv.ssoLocks.mu.Lock()
	r.srv.ssoLocks.confirm = time.Hour // the test stores the renewal's token well before
	r.srv.ssoLocks.mu.Unlock()
	r.op.AddUser("wes", password, grpGPU)
	cred := r.mustLogin("wes")
	key := r.srv.cfg.AgentKey

	// The other replica's renewal redeems the stored token, with the
	// leader's re-checks of the login held back meanwhile.
	id := r.ssoLogin(cred.RefreshToken).ID
	unlock := r.srv.ssoLocks.lock(id)
	l := r.ssoLogin(cred.RefreshToken)
	rt, err := sso.Open(key, l.ProviderRefresh)
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	renewed, err := r.op.Refresh(ctx, oidcop.CLIClientID, rt)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	refused := func() bool {
		r.srv.ssoLocks.mu.Lock()
		defer r.srv.ssoLocks.mu.Unlock()
		_, ok := r.srv.ssoLocks.refused[id]
		return ok
	}
	testutil.Eventually(t, testutil.WaitMedium, "the leader's re-check to be refused", func() bool {
		return refused() || !r.ssoLogin(cred.RefreshToken).EndedAt.IsZero()
	})
	if l := r.ssoLogin(cred.RefreshToken); !l.EndedAt.IsZero() {
		t.Fatalf("the leader ended the login at the first refusal, racing a renewal: %+v", l)
	}
	// The renewal commits the provider's new token.
	sealed, err := sso.Seal(key, renewed.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	err = r.st.InTx(ctx, func(tx store.Store) error {
		l, err := tx.SSOLoginByToken(ctx, l.TokenID)
		if err != nil {
			return err
		}
		l.ProviderRefresh, l.CheckedAt = sealed, time.Now()
		return tx.UpdateSSOLogin(ctx, l)
	})
	if err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	testutil.Eventually(t, testutil.WaitMedium, "a re-check with the renewal's token", func() bool {
		l := r.ssoLogin(cred.RefreshToken)
		return l.CheckedAt.After(committed) || !l.EndedAt.IsZero()
	})
	if l := r.ssoLogin(cred.RefreshToken); !l.EndedAt.IsZero() {
		t.Errorf("the login ended: %+v", l)
	}
	if refused() {
		t.Errorf("the leader still remembers the refusal of the replaced token")
	}
	if _, err := r.client(cred.Token).Whoami(ctx); err != nil {
		t.Errorf("the credential after the race: %v", err)
	}
}

// On a follower replica, a renewal the provider refuses while the
// leader may be re-checking the login (due, still granting) does not end
// the login: the leader may have redeemed the same token a moment before
// and is about to store the provider's new one. It answers 503 (try
// again), and the renewal after the leader stored its token works.
func TestSSORenewalRacingLeaderRecheck(t *testing.T) {
	t.Parallel()
	op := oidcop.Start(t, oidcop.Options{})
	rig := newReplicaRig(t)
	start := func(id string, recheck time.Duration) (*Server, string) {
		srv, err := New(rig.ctx, Config{
			Store: rig.open(), Backends: []Backend{{Name: "local", Runtime: inproc.New(rig.reg)}}, AgentKey: rig.agent,
			Replica: Replica{ID: id}, HeartbeatInterval: rigHeartbeat, LeaseTTL: rigLeaseTTL, LivenessInterval: time.Hour,
			OIDC: &sso.Config{Issuer: op.Issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes,
				Projects:        []sso.ProjectMapping{{Group: grpGPU, Project: "default", Role: store.RoleDeveloper}},
				RecheckInterval: recheck},
		})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		t.Cleanup(func() {
			hs.Close()
			srv.Close()
		})
		return srv, hs.URL
	}
	// The leader's re-checks are an hour apart (the test makes its
	// redemption); the follower calls a login due after a minute.
	leader, _ := start("a", time.Hour)
	testutil.Eventually(t, testutil.WaitMedium, "replica a to lead", leader.IsLeader)
	follower, url := start("b", time.Minute)
	if follower.IsLeader() {
		t.Fatal("both replicas lead")
	}
	st := rig.open()
	ctx := rig.ctx
	client := func(token string) *sdk.Client {
		c, err := sdk.NewClient(url, token)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	op.AddUser("xena", password, grpGPU)
	tk, err := op.Login(ctx, oidcop.CLIClientID, "xena", password)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := client("").LoginOIDC(ctx, sdk.OIDCLogin{IDToken: tk.IDToken, RefreshToken: tk.RefreshToken, Nonce: tk.Nonce, Flow: sdk.FlowBrowser})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(cred.RefreshToken))
	// The leader's re-check, due, redeems the stored token and has not
	// stored the new one yet.
	var next string
	err = st.InTx(ctx, func(tx store.Store) error {
		l, err := tx.SSOLoginByRefreshHash(ctx, sum[:])
		if err != nil {
			return err
		}
		rt, err := sso.Open(rig.agent, l.ProviderRefresh)
		if err != nil {
			return err
		}
		renewed, err := op.Refresh(ctx, oidcop.CLIClientID, rt)
		if err != nil {
			return err
		}
		next = renewed.RefreshToken
		l.CheckedAt = time.Now().Add(-2 * time.Minute)
		return tx.UpdateSSOLogin(ctx, l)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client("").Refresh(ctx, cred.RefreshToken)
	wantProblem(t, "a renewal refused while the leader re-checks", err, http.StatusServiceUnavailable, "try again", "devgpu login URL")
	l, err := st.SSOLoginByRefreshHash(ctx, sum[:])
	if err != nil || !l.EndedAt.IsZero() {
		t.Fatalf("the login after the raced renewal = %+v, %v; want it going on", l, err)
	}
	if _, err := client(cred.Token).Whoami(ctx); err != nil {
		t.Errorf("the credential after the raced renewal: %v", err)
	}
	// The leader stores the provider's new token; the renewal works.
	sealed, err := sso.Seal(rig.agent, next)
	if err != nil {
		t.Fatal(err)
	}
	l.ProviderRefresh = sealed
	if err := st.UpdateSSOLogin(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := client("").Refresh(ctx, cred.RefreshToken); err != nil {
		t.Errorf("the renewal after the leader stored its token: %v", err)
	}
}

// A single sign-on credential an administrator revoked by hand stays
// revoked: its renewal ends the login (audited) instead of minting a new
// credential.
func TestSSORevokedCredentialNotRenewed(t *testing.T) {
	t.Parallel()
	r := newSSORig(t, ssoRigOpts{})
	ctx := testutil.Context(t, testutil.WaitLong)
	r.op.AddUser("yann", password, grpGPU)
	cred := r.mustLogin("yann")
	id := r.ssoLogin(cred.RefreshToken).TokenID
	if _, err := r.client(r.admin).RevokeToken(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err := r.refresh(cred)
	wantProblem(t, "the renewal of a revoked credential", err, http.StatusUnauthorized, "your sign-in ended ("+endTokenRevoked+")", "devgpu login")
	if l := r.ssoLogin(cred.RefreshToken); l.EndedAt.IsZero() || l.EndReason != endTokenRevoked {
		t.Errorf("login = %+v, want ended %q", l, endTokenRevoked)
	}
	if r.audited("auth.end", ssoActor, "yann") != 1 {
		t.Errorf("the end is not audited as auth.end by sso")
	}
	// A new login works.
	r.mustLogin("yann")
}
