//go:build linux

package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/server"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

// The CLI against the real server (SQLite store) and the real provider:
// a device-flow login, whoami with the group's project, a silent renewal
// that the server re-checks with the provider, the end of access when the
// provider disables the person, and logout.
func TestSSOWithRealServer(t *testing.T) {
	useConfig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	op := oidcop.Start(t, oidcop.Options{})
	op.AddUser("gina", "pw", "ml-devs")
	op.AddUser("hal", "pw", "other")

	dir := testutil.ShortTempDir(t)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	if _, err := server.Bootstrap(ctx, st, "root", true, false, now); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateProject(ctx, &store.Project{Name: "ml", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	devs, _ := hostgpu.Simulated("t4:1")
	srv, err := server.New(ctx, server.Config{
		Store: st, Exclusive: true, LivenessInterval: time.Hour,
		AgentKey: []byte(strings.Repeat("k", server.AgentKeySize)), // single sign-on needs a persistent one
		Backends: []server.Backend{{Name: "inproc", Runtime: inproc.New(inproc.NewRegistry(filepath.Join(dir, "s"), devs...))}},
		OIDC: &sso.Config{Issuer: op.Issuer, ClientID: oidcop.CLIClientID, Scopes: oidcop.Scopes, RecheckInterval: time.Hour,
			Projects: []sso.ProjectMapping{{Group: "ml-devs", Project: "ml", Role: store.RoleDeveloper}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })

	login := func(user string) error {
		client, _ := sdk.NewClient(hs.URL, "")
		ac, err := client.AuthConfig(ctx)
		if err != nil || ac.OIDC == nil {
			t.Fatalf("auth config: %+v, %v", ac, err)
		}
		stderr := newLines()
		l := &oidcLogin{provider: *ac.OIDC, http: &http.Client{Timeout: testutil.WaitMedium}, stderr: stderr, device: true, getenv: noEnv}
		approved := make(chan error, 1)
		go func() {
			code := stderr.wait(t, ctx, regexp.MustCompile(`enter the code (\S+)$`))
			approved <- op.ApproveDevice(ctx, code, user, "pw")
		}()
		file, _, _ := readConfigFile()
		err = loginSSO(ctx, client, l, file, "")
		if aerr := <-approved; aerr != nil {
			t.Fatalf("approve %s's device login: %v", user, aerr)
		}
		return err
	}
	whoami := func() (sdk.Whoami, error) {
		client, _, err := newClient()
		if err != nil {
			return sdk.Whoami{}, err
		}
		return client.Whoami(ctx)
	}
	// expireSoon makes the saved credential due for renewal.
	expireSoon := func() credential {
		f, _, _ := readConfigFile()
		cr := f.current()
		soon := time.Now().Add(time.Minute)
		cr.ExpiresAt = &soon
		if err := saveCredential(f.URL, &cr); err != nil {
			t.Fatal(err)
		}
		return cr
	}

	// hal is in no group that grants anything: the server's sentence.
	if err := login("hal"); err == nil || !strings.Contains(err.Error(), "ml-devs") {
		t.Fatalf("hal's login: %v; want a refusal naming ml-devs", err)
	}

	if err := login("gina"); err != nil {
		t.Fatal(err)
	}
	me, err := whoami()
	if err != nil {
		t.Fatal(err)
	}
	if me.User != "gina" || me.Auth != sdk.AuthSSO || me.ExpiresAt == nil || len(me.Projects) != 1 ||
		me.Projects[0] != (sdk.WhoamiProject{Name: "ml", Role: "developer", Source: "group"}) {
		t.Fatalf("whoami: %+v", me)
	}

	old := expireSoon()
	if me, err = whoami(); err != nil || me.User != "gina" {
		t.Fatalf("whoami after a renewal: %+v, %v", me, err)
	}
	if f, _, _ := readConfigFile(); f.Token == old.Token || f.current().RefreshToken == old.RefreshToken {
		t.Fatalf("not renewed: %+v", f.current())
	}
	// The previous token no longer works.
	stale, _ := sdk.NewClient(hs.URL, old.Token)
	if _, err := stale.Whoami(ctx); !sdk.IsStatus(err, http.StatusUnauthorized) {
		t.Errorf("the renewed-away token: %v; want 401", err)
	}

	// Disabled at the provider: the next renewal ends the sign-in.
	op.DisableUser("gina")
	expireSoon()
	if _, err := whoami(); err == nil || !strings.Contains(err.Error(), "your single sign-on to "+hs.URL+" has ended") ||
		!strings.Contains(err.Error(), "run `devgpu login "+hs.URL+"`") {
		t.Fatalf("whoami after gina was disabled at the provider: %v", err)
	}

	// logout ends the sign-in at the server.
	op.EnableUser("gina")
	if err := login("gina"); err != nil {
		t.Fatal(err)
	}
	f, _, _ := readConfigFile()
	token := f.Token
	cmd := newLogoutCmd()
	cmd.SetArgs([]string{})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	gone, _ := sdk.NewClient(hs.URL, token)
	if _, err := gone.Whoami(context.Background()); !sdk.IsStatus(err, http.StatusUnauthorized) {
		t.Errorf("the token after logout: %v; want 401", err)
	}
	if _, err := whoami(); err == nil || !strings.Contains(err.Error(), "not logged in") {
		t.Errorf("whoami after logout: %v", err)
	}
}
