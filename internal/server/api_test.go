package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/local"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.Cleanup()
	os.Exit(code)
}

// fixture is a server on a real SQLite store and the local runtime, with
// an org admin, a developer who is a member of "default", and an outsider.
type fixture struct {
	t                               *testing.T
	url                             string
	admin, padmin, dev, dev2, other string // tokens
	srv                             *Server
}

func newFixture(t *testing.T, opts ...func(*Config)) *fixture {
	t.Helper()
	return newFixtureWith(t, "t4:2", opts...)
}

// newFixtureWith is newFixture on a local runtime lending the simulated
// GPUs gpus (gpu.ParseSimulated).
func newFixtureWith(t *testing.T, gpus string, opts ...func(*Config)) *fixture {
	t.Helper()
	bin := testutil.Binary(t) // built before the deadline: on a loaded machine the link alone takes half a minute
	dir := testutil.ShortTempDir(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	devs, err := hostgpu.Simulated(gpus)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := local.New(local.Config{Dir: filepath.Join(dir, "s"), Devices: devs, AgentCommand: []string{bin, "agent"}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	adminToken, err := Bootstrap(ctx, st, "root", true, false, now)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, admin: adminToken}
	p, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct {
		name  string
		token *string
		role  string
	}{{"padmin", &f.padmin, store.RoleAdmin}, {"dev", &f.dev, store.RoleDeveloper}, {"dev2", &f.dev2, store.RoleDeveloper}, {"other", &f.other, ""}} {
		user := store.User{Name: u.name, CreatedAt: now}
		if err := st.CreateUser(ctx, &user); err != nil {
			t.Fatal(err)
		}
		if *u.token, _, err = NewToken(ctx, st, user.ID, "test", now, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if u.role != "" {
			if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: user.ID, Role: u.role}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Exclusive: SQLite, as the CLI runs it (the one server leads).
	cfg := Config{Store: st, Backends: []Backend{{Name: "local", Runtime: rt}}, LivenessInterval: time.Hour, Exclusive: true}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	f.url = serveHTTP(t, srv, rt)
	return f
}

// serveHTTP serves srv over HTTP until the test ends, then closes both and
// stops every session left in rt; it returns the server's URL.
func serveHTTP(t *testing.T, srv *Server, rt runtime.Runtime) string {
	t.Helper()
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
		for _, in := range must(rt.List(context.Background())) {
			_ = rt.Stop(context.Background(), in.SessionID)
		}
	})
	return hs.URL
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// call makes a request and returns the status and body, checking that
// every error is an RFC 9457 problem.
func (f *fixture) call(token, method, path string, body any) (int, []byte) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var p sdk.Problem
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			f.t.Errorf("%s %s: error content type %q", method, path, ct)
		}
		if err := json.Unmarshal(b, &p); err != nil || p.Status != resp.StatusCode || p.Detail == "" {
			f.t.Errorf("%s %s: error body is not a problem: %s", method, path, b)
		}
	}
	return resp.StatusCode, b
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, token := range []string{"", "dgp_wrong"} {
		if code, _ := f.call(token, "GET", "/api/v1/sessions", nil); code != http.StatusUnauthorized {
			t.Errorf("token %q: %d, want 401", token, code)
		}
	}
	if code, body := f.call(f.dev, "GET", "/api/v1/whoami", nil); code != 200 || !bytes.Contains(body, []byte(`"user":"dev"`)) {
		t.Errorf("whoami: %d %s", code, body)
	}
	if code, _ := f.call("", "GET", "/healthz", nil); code != 200 {
		t.Errorf("healthz: %d", code)
	}
}

// The authorization matrix for every endpoint, across the roles.
func TestAuthorizationMatrix(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
	if code != http.StatusCreated {
		t.Fatalf("developer creates a session: %d %s", code, body)
	}
	var sess sdk.Session
	_ = json.Unmarshal(body, &sess)
	sessPath := "/api/v1/sessions/" + sess.ID

	cases := []struct {
		name, token, method, path string
		body                      any
		want                      int
	}{
		{"outsider cannot see the project", f.other, "GET", "/api/v1/projects/default", nil, 404},
		{"outsider cannot start a session", f.other, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{Project: "default"}, 404},
		{"outsider cannot see a session", f.other, "GET", sessPath, nil, 404},
		{"another developer cannot see a session", f.dev2, "GET", sessPath, nil, 404},
		{"another developer cannot stop a session", f.dev2, "DELETE", sessPath, nil, 404},
		{"another developer cannot attach", f.dev2, "GET", sessPath + "/connect", nil, 404},
		{"the admin may not type into someone's shell", f.admin, "GET", sessPath + "/connect", nil, 403},
		{"developer may not list everyone's sessions", f.dev, "GET", "/api/v1/sessions?all=true", nil, 403},
		{"developer may not create projects", f.dev, "POST", "/api/v1/projects", sdk.ProjectCreate{Name: "x"}, 403},
		{"developer may not change the project", f.dev, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{}, 403},
		{"developer may not delete the project", f.dev, "DELETE", "/api/v1/projects/default", nil, 403},
		{"outsider does not learn the project exists", f.other, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{}, 404},
		{"owner sees the session", f.dev, "GET", sessPath, nil, 200},
		{"member sees the project", f.dev, "GET", "/api/v1/projects/default", nil, 200},
		{"admin sees the session", f.admin, "GET", sessPath, nil, 200},
		{"admin lists everyone's sessions", f.admin, "GET", "/api/v1/sessions?all=true", nil, 200},
		{"unknown fields are refused", f.admin, "PATCH", "/api/v1/projects/default", map[string]any{"settings": map[string]any{"gpu_enabeld": false}}, 400},
		{"bad project names are refused", f.admin, "POST", "/api/v1/projects", sdk.ProjectCreate{Name: "Bad Name"}, 400},
		{"project with a session cannot be deleted", f.admin, "DELETE", "/api/v1/projects/default", nil, 409},
		{"unknown endpoint", f.admin, "GET", "/api/v1/nope", nil, 404},
	}
	for _, c := range cases {
		if code, body := f.call(c.token, c.method, c.path, c.body); code != c.want {
			t.Errorf("%s: %s %s = %d, want %d (%s)", c.name, c.method, c.path, code, c.want, body)
		}
	}
	// Developers list only their own sessions.
	_, body = f.call(f.dev2, "GET", "/api/v1/sessions", nil)
	if string(bytes.TrimSpace(body)) != "[]" {
		t.Errorf("dev2 sees sessions: %s", body)
	}
	// The admin stopping a developer's session records reason admin.
	code, body = f.call(f.admin, "DELETE", sessPath, nil)
	_ = json.Unmarshal(body, &sess)
	if code != 200 || sess.State != sdk.StateEnded || sess.EndReason != sdk.ReasonAdmin {
		t.Fatalf("admin stop: %d %+v", code, sess)
	}
}

// Disabling GPUs refuses new sessions at once, with the fix in the message.
func TestGPUDisabledRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	off := false
	if code, body := f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{GPUEnabled: &off}}); code != 200 {
		t.Fatalf("disable: %d %s", code, body)
	}
	code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
	if code != http.StatusForbidden || !bytes.Contains(body, []byte("GPU sessions are disabled in project default")) {
		t.Fatalf("create with GPUs disabled: %d %s", code, body)
	}
}

// Every endpoint against every role: organisation admin, project admin,
// the session's owner, another developer of the project, and a user who
// is not a member. Each cell is allowed (2xx), refused (403) or hidden (404).
func TestAuthorizationMatrixAllEndpoints(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	code, body := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
	if code != http.StatusCreated {
		t.Fatalf("create session: %d %s", code, body)
	}
	var sess sdk.Session
	_ = json.Unmarshal(body, &sess)
	// A token of dev2's, to revoke.
	code, body = f.call(f.dev2, "POST", "/api/v1/tokens", sdk.TokenCreate{Name: "spare"})
	if code != http.StatusCreated {
		t.Fatalf("create token: %d %s", code, body)
	}
	var tok sdk.TokenCreated
	_ = json.Unmarshal(body, &tok)

	roles := []string{"org-admin", "project-admin", "owner", "developer", "outsider"}
	tokens := []string{f.admin, f.padmin, f.dev, f.dev2, f.other}
	sp := "/api/v1/sessions/" + sess.ID
	n := 0
	uniq := func() string { n++; return fmt.Sprintf("n%d", n) }
	fixed := func(path string) func() string { return func() string { return path } }
	// Paths of things a DELETE removes are made anew for every role.
	newSession := func() string {
		_, b := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{})
		var s sdk.Session
		_ = json.Unmarshal(b, &s)
		return "/api/v1/sessions/" + s.ID
	}
	newToken := func() string {
		_, b := f.call(f.dev2, "POST", "/api/v1/tokens", sdk.TokenCreate{Name: "spare"})
		var tok sdk.TokenCreated
		_ = json.Unmarshal(b, &tok)
		return fmt.Sprintf("/api/v1/tokens/%d", tok.ID)
	}
	outsiderMember := func() string {
		f.call(f.admin, "PUT", "/api/v1/projects/default/members/other", map[string]string{"role": "developer"})
		return "/api/v1/projects/default/members/other"
	}
	outsiderOut := func() string {
		f.call(f.admin, "DELETE", "/api/v1/projects/default/members/other", nil)
		return "/api/v1/projects/default/members/other"
	}
	newImage := func() string {
		name := uniq()
		f.call(f.admin, "POST", "/api/v1/images", sdk.CatalogImage{Name: name, Ref: "ghcr.io/acme/py:1"})
		return "/api/v1/images/" + name
	}
	newProject := func() string {
		name := uniq()
		f.call(f.admin, "POST", "/api/v1/projects", sdk.ProjectCreate{Name: name})
		f.call(f.admin, "PUT", "/api/v1/projects/"+name+"/members/padmin", map[string]string{"role": "admin"})
		f.call(f.admin, "PUT", "/api/v1/projects/"+name+"/members/dev", map[string]string{"role": "developer"})
		f.call(f.admin, "PUT", "/api/v1/projects/"+name+"/members/dev2", map[string]string{"role": "developer"})
		return "/api/v1/projects/" + name
	}
	cases := []struct {
		method string
		path   func() string
		body   func() any
		want   [5]int
	}{
		{"GET", fixed("/api/v1/whoami"), nil, [5]int{200, 200, 200, 200, 200}},
		{"GET", fixed("/api/v1/gpus"), nil, [5]int{200, 200, 200, 200, 200}},
		{"GET", fixed("/api/v1/sessions"), nil, [5]int{200, 200, 200, 200, 200}},
		{"POST", fixed("/api/v1/sessions"), func() any { return sdk.CreateSessionRequest{GPUType: "nope"} }, [5]int{400, 400, 400, 400, 404}},
		{"GET", fixed("/api/v1/sessions?all=true"), nil, [5]int{200, 403, 403, 403, 403}},
		{"GET", fixed(sp), nil, [5]int{200, 200, 200, 404, 404}},
		{"GET", fixed(sp + "/connect"), nil, [5]int{403, 403, 426, 404, 404}},
		{"DELETE", newSession, nil, [5]int{200, 200, 200, 404, 404}},
		{"GET", fixed("/api/v1/projects"), nil, [5]int{200, 200, 200, 200, 200}},
		{"GET", fixed("/api/v1/projects/default"), nil, [5]int{200, 200, 200, 200, 404}},
		{"POST", fixed("/api/v1/projects"), func() any { return sdk.ProjectCreate{Name: uniq()} }, [5]int{201, 403, 403, 403, 403}},
		{"PATCH", fixed("/api/v1/projects/default"), func() any { return sdk.ProjectUpdate{} }, [5]int{200, 200, 403, 403, 404}},
		{"DELETE", newProject, nil, [5]int{204, 403, 403, 403, 404}},
		{"GET", fixed("/api/v1/projects/default/members"), nil, [5]int{200, 200, 200, 200, 404}},
		{"PUT", outsiderOut, func() any { return map[string]string{"role": "developer"} }, [5]int{200, 200, 403, 403, 404}},
		// The outsider is made a developer for this row: developers may not
		// remove members, themselves included.
		{"DELETE", outsiderMember, nil, [5]int{204, 204, 403, 403, 403}},
		{"GET", fixed("/api/v1/org/policy"), nil, [5]int{200, 200, 200, 200, 200}},
		{"PUT", fixed("/api/v1/org/policy"), func() any { return sdk.OrgPolicy{} }, [5]int{200, 403, 403, 403, 403}},
		{"GET", fixed("/api/v1/users"), nil, [5]int{200, 403, 403, 403, 403}},
		{"POST", fixed("/api/v1/users"), func() any { return sdk.UserCreate{Name: uniq()} }, [5]int{201, 403, 403, 403, 403}},
		{"PATCH", fixed("/api/v1/users/dev2"), func() any { return sdk.UserUpdate{} }, [5]int{200, 403, 403, 403, 403}},
		{"GET", fixed("/api/v1/tokens"), nil, [5]int{200, 200, 200, 200, 200}},
		{"GET", fixed("/api/v1/tokens?user=dev2"), nil, [5]int{200, 403, 403, 200, 403}},
		{"POST", fixed("/api/v1/tokens"), func() any { return sdk.TokenCreate{User: "dev2"} }, [5]int{201, 403, 403, 201, 403}},
		{"DELETE", newToken, nil, [5]int{200, 404, 404, 200, 404}},
		{"GET", fixed("/api/v1/audit"), nil, [5]int{200, 403, 403, 403, 403}},
		{"GET", fixed("/api/v1/images"), nil, [5]int{200, 200, 200, 200, 200}},
		{"GET", fixed("/api/v1/pools"), nil, [5]int{200, 200, 200, 200, 200}},
		{"PUT", func() string { outsiderOut(); return "/api/v1/pools" }, func() any { return sdk.WarmPool{Project: "default", GPUType: "t4", Size: 0} }, [5]int{200, 200, 403, 403, 404}},
		{"POST", fixed("/api/v1/images"), func() any { return sdk.CatalogImage{Name: uniq(), Ref: "ghcr.io/acme/py:1"} }, [5]int{201, 403, 403, 403, 403}},
		{"DELETE", newImage, nil, [5]int{204, 403, 403, 403, 403}},
		{"GET", fixed("/api/v1/usage"), nil, [5]int{200, 200, 200, 200, 200}},
		{"GET", func() string { outsiderOut(); return "/api/v1/usage?project=default" }, nil, [5]int{200, 200, 200, 200, 404}},
		{"GET", fixed("/api/v1/usage?user=dev2"), nil, [5]int{200, 403, 403, 200, 403}},
		{"GET", func() string { outsiderOut(); return "/api/v1/audit?project=default" }, nil, [5]int{200, 200, 403, 403, 404}},
	}
	for _, c := range cases {
		for i, role := range roles {
			path := c.path()
			var body any
			if c.body != nil {
				body = c.body()
			}
			if got, b := f.call(tokens[i], c.method, path, body); got != c.want[i] {
				t.Errorf("%s %s as %s: %d, want %d (%s)", c.method, path, role, got, c.want[i], b)
			}
		}
	}
}

// withImages hides that the runtime it wraps ignores images
// (runtime.Imageless), so that the server checks the images sessions ask
// for as it does for the oci runtime.
type withImages struct{ runtime.Runtime }

// Sessions ask for catalog names or, from allowed registries, references;
// the project's allowed images are enforced.
func TestImageCatalog(t *testing.T) {
	t.Parallel()
	f := newFixture(t, func(c *Config) { c.Backends[0].Runtime = withImages{c.Backends[0].Runtime} })
	if code, b := f.call(f.admin, "POST", "/api/v1/images", sdk.CatalogImage{Name: "py", Ref: "ghcr.io/acme/py@sha256:" + strings.Repeat("a", 64)}); code != 201 {
		t.Fatalf("add image: %d %s", code, b)
	}
	if code, _ := f.call(f.admin, "POST", "/api/v1/images", sdk.CatalogImage{Name: "py", Ref: "x/y:1"}); code != 409 {
		t.Fatalf("add a taken name: %d", code)
	}
	if code, _ := f.call(f.admin, "POST", "/api/v1/images", sdk.CatalogImage{Name: "bad", Ref: "Not A Ref"}); code != 400 {
		t.Fatalf("add a bad reference: %d", code)
	}
	create := func(image string) (int, sdk.Session, string) {
		code, b := f.call(f.dev, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{Image: image})
		var s sdk.Session
		_ = json.Unmarshal(b, &s)
		if code == 201 {
			f.call(f.dev, "DELETE", "/api/v1/sessions/"+s.ID, nil)
		}
		return code, s, string(b)
	}
	if code, s, b := create("py"); code != 201 || !strings.HasPrefix(s.Image, "ghcr.io/acme/py@sha256:") {
		t.Fatalf("catalog image: %d %s", code, b)
	}
	if code, _, b := create("ghcr.io/acme/own:1"); code != 403 || !strings.Contains(b, "images from ghcr.io are not allowed") {
		t.Fatalf("bring-your-own from a registry not on the list: %d %s", code, b)
	}
	f.call(f.admin, "PUT", "/api/v1/org/policy", sdk.OrgPolicy{Registries: []string{"ghcr.io/acme"}})
	if code, s, b := create("ghcr.io/acme/own:1"); code != 201 || s.Image != "ghcr.io/acme/own:1" {
		t.Fatalf("bring-your-own from an allowed registry: %d %s", code, b)
	}
	if code, _, b := create("nope"); code != 400 || !strings.Contains(b, "not in the catalog") {
		t.Fatalf("unknown name: %d %s", code, b)
	}
	images := []string{"py"}
	f.call(f.admin, "PATCH", "/api/v1/projects/default", sdk.ProjectUpdate{Settings: sdk.ProjectSettings{Images: &images}})
	if code, _, b := create("ghcr.io/acme/own:1"); code != 403 || !strings.Contains(b, "not allowed in project default; allowed: py") {
		t.Fatalf("image outside the project's list: %d %s", code, b)
	}
}
