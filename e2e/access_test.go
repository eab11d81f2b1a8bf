package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// as returns the installation seen by another user: the same server and
// binary, with a CLI config holding that user's token.
func (e *env) as(token string) *env {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, "config.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		e.t.Fatal(err)
	}
	cfg["token"] = token
	other := *e
	other.dir = testutil.ShortTempDir(e.t)
	if b, err = json.Marshal(cfg); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other.dir, "config.json"), b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return &other
}

// anySession finds a session in everyone's list (the admin's view).
func (e *env) anySession(id string) sdk.Session {
	e.t.Helper()
	r := e.cli("sessions", "list", "--all", "--all-users", "--json")
	var all []sdk.Session
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		e.t.Fatalf("sessions list --all --json: %v\n%+v", err, r)
	}
	for _, s := range all {
		if s.ID == id {
			return s
		}
	}
	e.t.Fatalf("session %s not listed", id)
	return sdk.Session{}
}

// A member removed from the project while their shell is open, on a real
// PTY through the real binary: the shell is cut at once, the session ends
// (revoked, audited), and attaching again is refused.
func TestRemovedMemberShellCut(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:4")
	r := e.cli("admin", "user", "create", "bob", "--json")
	var bob sdk.UserCreated
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &bob) != nil || bob.Token == "" {
		t.Fatalf("admin user create bob: %+v", r)
	}
	e.admin("member", "add", "default", "bob")
	asBob := e.as(bob.Token)
	tm := asBob.terminal("shell")
	id := tm.sessionID()
	tm.ready()

	// Nothing else would end the shell: that it exits (within tm.wait's
	// deadline) is the cut; the audit below says it was the removal's.
	e.admin("member", "remove", "default", "bob")
	if code := tm.wait(); code != 255 {
		t.Errorf("bob's devgpu shell exited %d after his removal, want 255", code)
	}
	var s sdk.Session
	testutil.Eventually(t, testutil.WaitMedium, "bob's session to end", func() bool {
		s = e.anySession(id)
		return s.State == sdk.StateEnded
	})
	if s.EndReason != sdk.ReasonRevoked {
		t.Errorf("bob's session ended %q, want %q", s.EndReason, sdk.ReasonRevoked)
	}
	if r := asBob.cli("shell", "--attach", id); r.code != 255 || strings.Contains(r.stdout, "READY") {
		t.Errorf("bob attaching again after his removal: %+v", r)
	}
	if r := e.cli("admin", "audit", "--json"); !strings.Contains(r.stdout, "access.cut") || !strings.Contains(r.stdout, id) {
		t.Errorf("the audit log has no access.cut event naming %s:\n%s", id, r.stdout)
	}
}

// A project named with terminal escapes is refused; one that got into the
// store anyway (written there directly) lists escaped, so it cannot clear
// or retitle the admin's terminal.
func TestControlCharactersEscaped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	evil := "\x1b[2J\x1b]0;pwned\x07"
	if r := e.cli("admin", "project", "create", evil); r.code != 255 || strings.ContainsAny(r.stderr, "\x1b\x07") {
		t.Errorf("project create with escapes: %+v; want refused, the name shown escaped", r)
	}
	if r := e.cli("admin", "token", "create", "--name", "laptop\x1b[2J"); r.code != 255 {
		t.Errorf("token create with escapes in its name: %+v; want refused", r)
	}

	// The server holds its SQLite store alone: write behind its back while
	// it is stopped.
	e.stopServer(syscall.SIGTERM)
	ctx := testutil.Context(t, testutil.WaitMedium)
	st, err := sqlite.Open(ctx, filepath.Join(e.dir, "data", "devgpu.db"))
	if err != nil {
		t.Fatal(err)
	}
	p := store.Project{Name: evil, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	err = st.CreateProject(ctx, &p)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.startServer()
	r := e.cli("admin", "project", "list")
	if r.code != 0 {
		t.Fatalf("project list: %+v", r)
	}
	if strings.ContainsAny(r.stdout, "\x1b\x07") || !strings.Contains(r.stdout, `\x1b[2J\x1b]0;pwned\x07`) {
		t.Errorf("project list shows the name unescaped:\n%q", r.stdout)
	}
}
