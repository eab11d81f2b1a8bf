package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// The web console in a real browser (issue 14): web/test/console.mjs
// drives Debian's Chromium with playwright-core against a real server set
// up here; this test prepares the installation, runs the script with what
// it needs in its environment, streams its output into the test log, and
// checks on the server's side what the pages did.

// consoleTools finds node, Chromium and web/node_modules. Where one is
// missing the test skips, saying what to install, except in CI
// (CI or DEVGPU_CONSOLE_REQUIRE set), where that is a failure.
func consoleTools(t *testing.T) (node, chromium, webDir string) {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	webDir = filepath.Join(root, "web")
	chromium = os.Getenv("DEVGPU_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	var missing []string
	if _, err := os.Stat(chromium); err != nil {
		missing = append(missing, chromium+" (install Debian's chromium, or set DEVGPU_CHROMIUM)")
	}
	if node, err = exec.LookPath("node"); err != nil {
		missing = append(missing, "node (install Node.js 20 or newer)")
	}
	for _, m := range []string{"playwright-core", "axe-core"} {
		if _, err := os.Stat(filepath.Join(webDir, "node_modules", m, "package.json")); err != nil {
			missing = append(missing, "web/node_modules/"+m+" (run `npm ci` in web/, as `make test` does)")
		}
	}
	if len(missing) > 0 {
		msg := "the web console's browser test needs " + strings.Join(missing, ", ")
		if os.Getenv("CI") != "" || os.Getenv("DEVGPU_CONSOLE_REQUIRE") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node, chromium, webDir
}

// userWithToken creates a user and returns their API token.
func (e *env) userWithToken(name string) string {
	e.t.Helper()
	r := e.cli("admin", "user", "create", name, "--json")
	if r.code != 0 {
		e.t.Fatalf("admin user create %s: %+v", name, r)
	}
	var created struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil || created.Token == "" {
		e.t.Fatalf("admin user create --json: %v\n%s", err, r.stdout)
	}
	return created.Token
}

// apiCall sends body as JSON to the API with a bearer token and returns
// the answer, whose body the caller closes.
func (e *env) apiCall(token, method, path string, body any) *http.Response {
	e.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		e.t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(testutil.Context(e.t, testutil.WaitMedium), method, e.url()+path, bytes.NewReader(b))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

// apiProblem sends a request to the API with a bearer token and returns
// its status and, for a problem, its one-sentence detail.
func (e *env) apiProblem(token, method, path string, body any) (int, string) {
	e.t.Helper()
	resp := e.apiCall(token, method, path, body)
	defer resp.Body.Close()
	var p sdk.Problem
	_ = json.NewDecoder(resp.Body).Decode(&p)
	return resp.StatusCode, p.Detail
}

// projectShow reads a project's settings as they apply.
func (e *env) projectShow(name string) sdk.Project {
	e.t.Helper()
	r := e.cli("admin", "project", "show", name, "--json")
	if r.code != 0 {
		e.t.Fatalf("admin project show %s: %+v", name, r)
	}
	var p sdk.Project
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		e.t.Fatalf("admin project show --json: %v\n%s", err, r.stdout)
	}
	return p
}

// testLog writes what a process prints into the test log, line by line,
// as it comes.
type testLog struct {
	t      *testing.T
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.t.Log(l.prefix + string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}

func (l *testLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.t.Log(l.prefix + string(l.buf))
		l.buf = nil
	}
}

// consoleArtifacts is where the screenshots go: DEVGPU_TEST_ARTIFACTS
// (a directory per test under it), else a temporary directory kept when
// the test fails, so that its screenshots can be looked at.
func consoleArtifacts(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("DEVGPU_TEST_ARTIFACTS"); dir != "" {
		dir, err := filepath.Abs(filepath.Join(dir, t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dir, err := os.MkdirTemp("", "devgpu-console-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("screenshots kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// cutProxy is a TCP proxy on a loopback port of its own in front of the
// server: a network between the browser and the server that the browser
// test can take down and bring back (POST /cut and /resume on control),
// as a laptop's Wi-Fi drops. Cut closes every connection through it, both
// ends; while down it accepts connections and closes them at once. The
// page's origin is the proxy's, and it keeps the Host header the browser
// sent, so the server sees a page of its own origin, as it would behind
// a TCP load balancer.
type cutProxy struct {
	*testutil.Proxy
	control *httptest.Server

	mu   sync.Mutex
	cuts int // connections cut, in all
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	p := &cutProxy{Proxy: testutil.NewProxy(t, target)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cut", func(w http.ResponseWriter, r *http.Request) {
		n := p.Cut()
		p.mu.Lock()
		p.cuts += n
		p.mu.Unlock()
		t.Logf("proxy: the network is down (%d connections cut)", n)
		fmt.Fprintf(w, `{"cut":%d}`, n)
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		p.Restore()
		t.Logf("proxy: the network is back")
		fmt.Fprint(w, `{}`)
	})
	p.control = httptest.NewServer(mux)
	t.Cleanup(p.control.Close)
	return p
}

// url is the console's address through the proxy.
func (p *cutProxy) url() string { return "http://" + p.Addr }

func (p *cutProxy) cutCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// startDetached starts a session through the API with a bearer token, as
// a script would, and returns its id once it runs: a session with no
// shell open.
func (e *env) startDetached(token, project, gpuType string) string {
	e.t.Helper()
	resp := e.apiCall(token, "POST", "/api/v1/sessions", sdk.CreateSessionRequest{Project: project, GPUType: gpuType})
	defer resp.Body.Close()
	var s sdk.Session
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode >= 300 || s.ID == "" {
		e.t.Fatalf("POST /api/v1/sessions: %d %+v %v", resp.StatusCode, s, err)
	}
	e.as(token).waitSession(s.ID, testutil.WaitLong, "to run", func(s sdk.Session) bool { return s.State == sdk.StateRunning })
	return s.ID
}

// An admin and two developers use the console in Chromium: the admin
// changes a project's cap and meets a locked setting; a developer opens a
// GPU terminal (the GPU, resize, Ctrl-C, copy and paste, closing the tab),
// cannot see the other developer's session, and CSRF, cross-origin
// WebSocket, token minting and terminal-starting links from other sites
// are refused; through a proxy whose connections are cut the terminal
// reconnects to the same shell, and "End session" ends it; every page
// passes axe-core and is screenshotted. See web/test/console.mjs for the
// browser's side.
func TestConsole(t *testing.T) {
	t.Parallel()
	node, chromium, webDir := consoleTools(t)
	e := newEnv(t, "t4:4")
	const (
		project = "ml"
		locked  = "max_gpus_per_user"
		newCap  = 3
	)
	// The project inherits max_gpus (4) from the organisation; the
	// organisation fixes max_gpus_per_user for every project. Sessions
	// wait 10 minutes for a shell: dana's detached session outlives the
	// test, and a cut connection has all the time it needs to resume.
	e.admin("org", "update", "--max-gpus", "4", "--max-gpus-per-user", "2", "--lock", locked, "--detach-grace", "10m")
	e.admin("project", "create", project)
	adminToken := e.token()
	devToken := e.userWithToken("dana")
	e.admin("member", "add", project, "dana")
	erin := e.as(e.userWithToken("erin"))
	e.admin("member", "add", project, "erin")
	other := erin.runSession("sleep 3600")
	// dana's session with no shell open, which a link from another site
	// must not attach to.
	detached := e.startDetached(devToken, project, "t4")
	proxy := newCutProxy(t, e.addr)
	if s := e.projectShow(project); s.Effective["max_gpus"].Source != "org" {
		t.Fatalf("before the test max_gpus comes from %q, want org: %+v", s.Effective["max_gpus"].Source, s.Effective["max_gpus"])
	}
	// The server's sentence for a change of a locked setting, as any
	// client meets it; the page must get the same.
	status, refusal := e.apiProblem(adminToken, "PATCH", "/api/v1/projects/"+project, sdk.ProjectUpdate{Settings: sdk.ProjectSettings{MaxGPUsPerUser: new(int)}})
	if status != http.StatusForbidden || refusal == "" {
		t.Fatalf("PATCH of the locked %s through the API: %d %q, want 403 with a sentence", locked, status, refusal)
	}

	artifacts := consoleArtifacts(t)
	t.Logf("screenshots: %s", artifacts)
	result := filepath.Join(t.TempDir(), "result.json")
	tour := os.Getenv("DEVGPU_CONSOLE_SCREENSHOTS")
	if tour != "" && !filepath.IsAbs(tour) {
		root, err := testutil.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		tour = filepath.Join(root, tour) // docs/console from the repository's root
	}
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	ctx, cancel := context.WithTimeout(context.Background(), 5*testutil.WaitLong)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join("test", "console.mjs"))
	cmd.Dir = webDir
	cmd.Env = append(os.Environ(),
		"DEVGPU_CONSOLE_URL="+e.url(),
		"DEVGPU_ADMIN_TOKEN="+adminToken,
		"DEVGPU_DEV_TOKEN="+devToken,
		"DEVGPU_PROJECT="+project,
		"DEVGPU_GPU_TYPE=t4",
		"DEVGPU_NEW_CAP="+strconv.Itoa(newCap),
		"DEVGPU_LOCKED_SETTING="+locked,
		"DEVGPU_LOCKED_REFUSAL="+refusal,
		"DEVGPU_OTHER_SESSION="+other,
		"DEVGPU_DETACHED_SESSION="+detached,
		"DEVGPU_PROXY_URL="+proxy.url(),
		"DEVGPU_PROXY_CONTROL="+proxy.control.URL,
		"DEVGPU_CHROMIUM="+chromium,
		"TMPDIR="+t.TempDir(), // Chromium's fresh profile (--user-data-dir) goes there
		"DEVGPU_TEST_ARTIFACTS="+artifacts,
		"DEVGPU_CONSOLE_SCREENSHOTS="+tour,
		"DEVGPU_CONSOLE_RESULT="+result,
		"DEVGPU_WAIT_SHORT_MS="+ms(testutil.WaitShort),
		"DEVGPU_WAIT_MEDIUM_MS="+ms(testutil.WaitMedium),
		"DEVGPU_WAIT_LONG_MS="+ms(testutil.WaitLong),
	)
	out := &testLog{t: t, prefix: "console.mjs: "}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	out.flush()
	if ctx.Err() != nil {
		t.Fatalf("web/test/console.mjs did not finish within %s", 5*testutil.WaitLong)
	}
	if err != nil {
		t.Errorf("web/test/console.mjs: %v (its output is above)", err)
	}

	// What the pages did, seen from the server.
	var res struct {
		Session   string `json:"session"`
		Reconnect string `json:"reconnect"`
	}
	if b, err := os.ReadFile(result); err != nil || json.Unmarshal(b, &res) != nil {
		t.Fatalf("web/test/console.mjs wrote no result: %v", err)
	}
	p := e.projectShow(project)
	if got := p.Effective["max_gpus"]; fmt.Sprint(got.Value) != strconv.Itoa(newCap) || got.Source != "project" {
		t.Errorf("after the console: max_gpus is %v from %q, want %d from project", got.Value, got.Source, newCap)
	}
	if got := p.Effective[locked]; fmt.Sprint(got.Value) != "2" || !got.Locked {
		t.Errorf("after the console: the locked %s is %+v, want 2, locked", locked, got)
	}
	// One change, the cap: the locked setting and the CSRF attempts
	// changed nothing.
	var updates []sdk.AuditEvent
	for _, ev := range e.auditEvents("project.update") {
		if ev.Target == project {
			updates = append(updates, ev)
		}
	}
	if len(updates) != 1 {
		t.Errorf("the audit log has %d updates of %s, want the cap's alone: %+v", len(updates), project, updates)
	} else if after, _ := json.Marshal(updates[0].After); !strings.Contains(string(after), fmt.Sprintf(`"max_gpus":%d`, newCap)) {
		t.Errorf("the audit log's update of %s has after %s, want max_gpus %d", project, after, newCap)
	}
	if res.Session == "" {
		t.Fatal("the console opened no terminal session")
	}
	s := e.anySession(res.Session)
	if s.User != "dana" || s.Project != project || s.State != sdk.StateEnded || s.EndReason != sdk.ReasonClosed {
		t.Errorf("the terminal's session is %s's in %s, %s (%s), want dana's in %s, ended closed", s.User, s.Project, s.State, s.EndReason, project)
	}
	if res.Reconnect == "" {
		t.Error("the console opened no terminal through the proxy")
	} else if r := e.anySession(res.Reconnect); r.User != "dana" || r.State != sdk.StateEnded || r.EndReason != sdk.ReasonClosed {
		t.Errorf("the reconnected terminal's session is %s's, %s (%s), want dana's, ended closed by End session", r.User, r.State, r.EndReason)
	}
	if proxy.cutCount() == 0 {
		t.Error("the proxy cut no connection: the reconnect was not tested")
	}
	// The terminal's sessions and the detached one: no cross-origin POST
	// or link from another site started one.
	want := map[string]bool{res.Session: true, res.Reconnect: true, detached: true}
	mine := e.as(devToken).sessions()
	for _, s := range mine {
		if !want[s.ID] {
			t.Errorf("dana has a session %s (%s) that the console's terminals did not start: started by another site's POST or link?", s.ID, s.State)
		}
	}
	if len(mine) != len(want) {
		t.Errorf("dana has %d sessions, want %d (the two terminals' and the detached one): %+v", len(mine), len(want), mine)
	}
	if o := e.anySession(other); o.State != sdk.StateRunning {
		t.Errorf("erin's session %s is %s (%s) after the console, want running: no page of dana's may stop it", other, o.State, o.EndReason)
	}
}
