package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
	"github.com/devgpu/devgpu/sdk"
)

// ssoEnv is an installation whose server logs people in with the test
// identity provider: members of ml-devs are developers of project ml, of
// cv-devs developers of project cv, of gpu-admins organisation admins;
// every login is re-checked with the provider every second.
func ssoEnv(t *testing.T) (*env, *oidcop.OP) {
	t.Helper()
	op := oidcop.Start(t, oidcop.Options{})
	cfg := map[string]any{"oidc": map[string]any{
		"issuer":       op.Issuer,
		"client_id":    oidcop.CLIClientID,
		"scopes":       oidcop.Scopes,
		"admin_groups": []string{"gpu-admins"},
		"projects": []map[string]string{
			{"group": "ml-devs", "project": "ml", "role": "developer"},
			{"group": "cv-devs", "project": "cv", "role": "developer"},
		},
		"recheck_interval": "1s",
	}}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(testutil.ShortTempDir(t), "server.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "t4:2", "--config", path)
	e.admin("project", "create", "ml")
	e.admin("project", "create", "cv")
	return e, op
}

// person is the installation seen by someone who has not logged in yet:
// the same server and binary, with a CLI config of their own that does
// not exist yet.
func (e *env) person() *env {
	other := *e
	other.dir = testutil.ShortTempDir(e.t)
	return &other
}

// url is the server's URL as `devgpu login` takes it.
func (e *env) url() string { return "http://" + e.addr }

// start runs the CLI in the background with more environment variables
// (the last value of a name wins).
func (e *env) start(env []string, args ...string) *bg {
	e.t.Helper()
	b := &bg{exited: make(chan struct{})}
	b.cmd = exec.Command(e.bin, args...)
	b.cmd.Env = append(e.environ(), env...)
	b.cmd.Stdout, b.cmd.Stderr = lockedWriter{&b.mu, &b.stdout}, lockedWriter{&b.mu, &b.stderr}
	if err := b.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		_ = b.cmd.Wait()
		b.code = b.cmd.ProcessState.ExitCode()
		close(b.exited)
	}()
	e.t.Cleanup(func() { _ = b.cmd.Process.Kill(); <-b.exited })
	return b
}

// awaitStderr waits until re matches what the process wrote on stderr and
// returns the first submatch.
func (b *bg) awaitStderr(t *testing.T, what string, re *regexp.Regexp) string {
	t.Helper()
	var m []string
	testutil.Eventually(t, testutil.WaitMedium, what, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		m = re.FindStringSubmatch(b.stderr.String())
		return m != nil || b.done()
	})
	if m == nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		t.Fatalf("devgpu %s exited %d without %s; stderr:\n%s", strings.Join(b.cmd.Args[1:], " "), b.code, what, b.stderr.String())
	}
	return m[1]
}

func (b *bg) output() (stdout, stderr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stdout.String(), b.stderr.String()
}

// userCode is how `devgpu login --device` shows the code to enter.
var userCode = regexp.MustCompile(`enter the code ([A-Za-z0-9-]+)`)

// loginDevice runs `devgpu login URL --device` as a person would, enters
// its code on the provider's device page as user, and returns how the
// login ended.
func (e *env) loginDevice(op *oidcop.OP, user, password string) result {
	e.t.Helper()
	b := e.start(nil, "login", e.url(), "--device")
	code := b.awaitStderr(e.t, "the device flow's user code", userCode)
	ctx := testutil.Context(e.t, testutil.WaitMedium)
	if err := op.ApproveDevice(ctx, code, user, password); err != nil {
		e.t.Fatalf("approve the device code %s as %s: %v", code, user, err)
	}
	approved := time.Now()
	exit := b.wait(e.t)
	// The CLI polls the provider (every second here) and then hands the
	// tokens to the server, which redeems the refresh token once.
	// timing: reported, not asserted.
	e.t.Logf("devgpu login --device as %s ended %s after the code was approved", user, time.Since(approved).Round(time.Millisecond))
	stdout, stderr := b.output()
	return result{stdout, stderr, exit}
}

func (e *env) whoami() sdk.Whoami {
	e.t.Helper()
	r := e.cli("whoami", "--json")
	var w sdk.Whoami
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &w) != nil {
		e.t.Fatalf("whoami --json: %+v", r)
	}
	return w
}

// hasProject reports whether w lists project with role, made by a group.
func hasProject(w sdk.Whoami, project, role string) bool {
	return slices.ContainsFunc(w.Projects, func(p sdk.WhoamiProject) bool {
		return p.Name == project && p.Role == role && p.Source == "group"
	})
}

// Single sign-on end to end, with the real binary and a real OpenID
// provider: a person in ml-devs logs in with the device flow, is created
// just in time as a developer of ml and works there as herself; someone
// in no mapped group is refused, told which groups grant access; one in
// gpu-admins is an organisation admin; leaving ml-devs cuts the open shell
// in ml at the next re-check, and leaving every group ends the sign-in;
// logout forgets the credential.
func TestSSODeviceLogin(t *testing.T) {
	t.Parallel()
	e, op := ssoEnv(t)
	op.AddUser("alice", "alice-pw", "ml-devs", "cv-devs")
	op.AddUser("bob", "bob-pw", "marketing")
	op.AddUser("carol", "carol-pw", "gpu-admins")

	alice := e.person()
	if r := alice.loginDevice(op, "alice", "alice-pw"); r.code != 0 {
		t.Fatalf("alice's devgpu login --device: %+v", r)
	}
	if info, err := os.Stat(filepath.Join(alice.dir, "config.json")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("alice's CLI config after login: %v, %v; want it readable by her only (0600)", info, err)
	}
	w := alice.whoami()
	if w.User != "alice" || w.Auth != sdk.AuthSSO || w.OrgAdmin || w.ExpiresAt == nil || !hasProject(w, "ml", "developer") || !hasProject(w, "cv", "developer") {
		t.Errorf("alice's whoami: %+v; want alice, single sign-on, not an org admin, an expiry, developer of ml and cv from groups", w)
	}
	if r := alice.cli("whoami"); r.code != 0 || !strings.Contains(r.stdout, "alice") || !strings.Contains(r.stdout, "single sign-on") || !strings.Contains(r.stdout, "ml") || !strings.Contains(r.stdout, "developer") {
		t.Errorf("alice's whoami: %+v; want her name, single sign-on, and ml developer", r)
	}
	if r := e.cli("admin", "audit", "--json"); !strings.Contains(r.stdout, "auth.login") || !strings.Contains(r.stdout, `"sso"`) {
		t.Errorf("the audit log has no auth.login and no change by the actor sso after alice's first login:\n%s", r.stdout)
	}

	// She works in ml as herself.
	r := alice.cli("run", "-p", "ml", "--", "echo $DEVGPU_USER $DEVGPU_PROJECT")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "alice ml" {
		t.Fatalf("alice's devgpu run: %+v; want it to run in ml as alice", r)
	}
	tm := alice.terminal("shell", "-p", "ml")
	id := tm.sessionID()
	tm.ready()
	tm.send("echo U=$DEVGPU_USER\r")
	tm.expect("U=alice")
	if s := e.anySession(id); s.User != "alice" || s.Project != "ml" {
		t.Errorf("alice's shell session: user %q project %q, want alice in ml", s.User, s.Project)
	}

	// Someone in no mapped group gets nothing, and is told which groups
	// would grant access.
	bob := e.person()
	r = bob.loginDevice(op, "bob", "bob-pw")
	if r.code == 0 || !strings.Contains(r.stderr, "ml-devs") || !strings.Contains(r.stderr, "gpu-admins") {
		t.Errorf("bob's login (in no mapped group): %+v; want it refused, naming ml-devs and gpu-admins", r)
	}
	if r := e.cli("admin", "user", "list", "--json"); strings.Contains(r.stdout, `"bob"`) {
		t.Errorf("bob, refused, was created anyway:\n%s", r.stdout)
	}

	// gpu-admins makes organisation admins.
	carol := e.person()
	if r := carol.loginDevice(op, "carol", "carol-pw"); r.code != 0 {
		t.Fatalf("carol's devgpu login --device: %+v", r)
	}
	if w := carol.whoami(); w.User != "carol" || !w.OrgAdmin {
		t.Errorf("carol's whoami: %+v; want carol, an organisation admin through gpu-admins", w)
	}

	// Leaving ml-devs at the provider takes ml away at the next re-check:
	// her open shell there is cut; cv stays.
	op.SetGroups("alice", "cv-devs")
	left := time.Now()
	select {
	case <-tm.done:
		// recheck_interval is 1s here: the cut takes a re-check and the
		// shell's end.
		// timing: reported, not asserted.
		t.Logf("alice's shell in ml was cut %s after she left ml-devs (recheck_interval 1s)", time.Since(left).Round(time.Millisecond))
		if tm.code != 255 {
			t.Errorf("alice's shell in ml exited %d after she left ml-devs, want 255 (cut)", tm.code)
		}
	case <-time.After(testutil.WaitMedium):
		t.Fatalf("alice's shell in ml still runs %s after she left ml-devs; its terminal shows:\n%s", testutil.WaitMedium, tm.output())
	}
	testutil.Eventually(t, testutil.WaitMedium, "alice's membership of ml to go", func() bool {
		return !slices.ContainsFunc(e.members("ml"), func(m sdk.Member) bool { return m.User == "alice" })
	})
	if r := alice.cli("run", "-p", "ml", "--", "true"); r.code != 255 {
		t.Errorf("alice's run in ml after she left ml-devs: %+v; want it refused", r)
	}
	if r := alice.cli("run", "-p", "cv", "--", "echo $DEVGPU_PROJECT"); r.code != 0 || strings.TrimSpace(r.stdout) != "cv" {
		t.Errorf("alice's run in cv, whose group she kept: %+v", r)
	}

	// Leaving every group ends her sign-in at the next re-check.
	op.SetGroups("alice")
	left = time.Now()
	var last result
	testutil.Eventually(t, testutil.WaitMedium, "alice's sign-in to end", func() bool {
		last = alice.cli("whoami")
		return last.code != 0
	})
	if last.code != 255 || !strings.Contains(last.stderr, "devgpu login") {
		t.Errorf("alice's whoami after she left every group: %+v; want it refused, saying to log in again", last)
	}
	// timing: reported, not asserted.
	t.Logf("alice's sign-in was refused %s after she left every group (recheck_interval 1s)", time.Since(left).Round(time.Millisecond))

	// logout forgets the credential.
	if r := carol.cli("logout"); r.code != 0 {
		t.Fatalf("carol's logout: %+v", r)
	}
	if r := carol.cli("whoami"); r.code != 255 || !strings.Contains(r.stderr, "not logged in") {
		t.Errorf("carol's whoami after logout: %+v; want 'not logged in'", r)
	}
}

// The browser flow, driven as a person's browser would be: `devgpu login
// --no-browser` prints the provider's URL, the provider's login form is
// filled in, and its redirect reaches the CLI's loopback listener.
func TestSSOBrowserLogin(t *testing.T) {
	t.Parallel()
	e, op := ssoEnv(t)
	op.AddUser("dave", "dave-pw", "ml-devs")

	dave := e.person()
	// Whatever the test runs in, not an SSH session without a display,
	// where the CLI may choose the device flow.
	b := dave.start([]string{"SSH_CONNECTION=", "SSH_TTY=", "DISPLAY=:0"}, "login", dave.url(), "--no-browser")
	authURL := b.awaitStderr(t, "the URL to open", regexp.MustCompile(`(?m)^  (http://\S+)$`))
	ctx := testutil.Context(t, testutil.WaitMedium)
	redirect, err := op.Browse(ctx, authURL, "dave", "dave-pw")
	if err != nil {
		t.Fatalf("the provider's login form for %s: %v", authURL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, redirect.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("the redirect to the CLI's loopback listener %s: %v", redirect, err)
	}
	var page bytes.Buffer
	_, _ = page.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the CLI's callback page: %s\n%s", resp.Status, page.String())
	}
	if code := b.wait(t); code != 0 {
		stdout, stderr := b.output()
		t.Fatalf("dave's devgpu login --no-browser exited %d:\n%s%s", code, stdout, stderr)
	}
	if w := dave.whoami(); w.User != "dave" || w.Auth != sdk.AuthSSO || !hasProject(w, "ml", "developer") {
		t.Errorf("dave's whoami after the browser flow: %+v; want dave, single sign-on, developer of ml from a group", w)
	}
	if r := dave.cli("run", "--", "echo $DEVGPU_USER"); r.code != 0 || strings.TrimSpace(r.stdout) != "dave" {
		t.Errorf("dave's run: %+v", r)
	}
}

// members lists a project's members through the CLI's --json contract.
func (e *env) members(project string) []sdk.Member {
	e.t.Helper()
	r := e.cli("admin", "member", "list", project, "--json")
	var out []sdk.Member
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		e.t.Fatalf("admin member list %s --json: %+v", project, r)
	}
	return out
}

// require_sso, with the real binary: an organisation admin who logged in
// with single sign-on turns it on; a person's API token is then refused
// with the sentence that names the fix, a service account's keeps
// working, and so does the single sign-on credential.
func TestSSORequired(t *testing.T) {
	t.Parallel()
	e, op := ssoEnv(t)
	op.AddUser("carol", "carol-pw", "gpu-admins")
	dev := e.newUser("dev")
	bot := e.newUser("bot")
	e.admin("user", "update", "bot", "--service-account=true")

	carol := e.person()
	if r := carol.loginDevice(op, "carol", "carol-pw"); r.code != 0 {
		t.Fatalf("carol's devgpu login --device: %+v", r)
	}
	if r := carol.cli("admin", "org", "update", "--require-sso=true"); r.code != 0 {
		t.Fatalf("carol turning require_sso on: %+v", r)
	}
	var r result
	testutil.Eventually(t, testutil.WaitMedium, "dev's API token to be refused", func() bool {
		r = dev.cli("whoami")
		return r.code != 0
	})
	if r.code != 255 || !strings.Contains(r.stderr, "requires single sign-on") || !strings.Contains(r.stderr, "devgpu login") {
		t.Errorf("dev's API token under require_sso: %+v; want it refused, saying to log in with devgpu login", r)
	}
	if r := e.cli("whoami"); r.code != 255 || !strings.Contains(r.stderr, "requires single sign-on") {
		t.Errorf("the bootstrap admin's API token under require_sso: %+v; want it refused (not a service account)", r)
	}
	if w := bot.whoami(); w.User != "bot" || !w.ServiceAccount || w.Auth != sdk.AuthToken {
		t.Errorf("the service account's whoami under require_sso: %+v", w)
	}
	if w := carol.whoami(); w.User != "carol" || !w.OrgAdmin || w.Auth != sdk.AuthSSO {
		t.Errorf("carol's whoami under require_sso: %+v", w)
	}

	if r := carol.cli("admin", "org", "update", "--require-sso=false"); r.code != 0 {
		t.Fatalf("carol turning require_sso off: %+v", r)
	}
	testutil.Eventually(t, testutil.WaitMedium, "dev's API token to work again", func() bool {
		return dev.cli("whoami").code == 0
	})
}
