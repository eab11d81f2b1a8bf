package server

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/local"
	"github.com/devgpu/devgpu/internal/runtime/runtimetest"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// accessRig is a server on a real SQLite file and the local runtime with
// an org admin (root) and developers dev, dev2 and dev3 in "default",
// each with one token.
type accessRig struct {
	t      *testing.T
	st     store.Store
	rt     runtime.Runtime
	url    string
	db     string
	admin  string
	tokens map[string]string
}

func newAccessRig(t *testing.T) *accessRig {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	r := &accessRig{t: t, db: filepath.Join(dir, "devgpu.db"), tokens: map[string]string{}}
	st, err := sqlite.Open(ctx, r.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	devs, _ := hostgpu.Simulated("t4:4")
	rt, err := local.New(local.Config{Dir: filepath.Join(dir, "s"), Devices: devs, AgentCommand: []string{testutil.Binary(t), "agent"}})
	if err != nil {
		t.Fatal(err)
	}
	r.st, r.rt = st, rt
	now := time.Now()
	if r.admin, err = Bootstrap(ctx, st, "root", true, false, now); err != nil {
		t.Fatal(err)
	}
	p, err := st.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	// A long grace: a shell that vanishes leaves its session running.
	p.Settings.DetachGrace = ptr(sdk.Duration(time.Hour))
	if err := st.UpdateProject(ctx, &p); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"dev", "dev2", "dev3"} {
		u := store.User{Name: name, CreatedAt: now}
		if err := st.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
		if r.tokens[name], _, err = NewToken(ctx, st, u.ID, "test", now, time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := st.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper}); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := New(ctx, Config{Store: st, Backends: []Backend{{Name: "local", Runtime: rt}}, LivenessInterval: time.Hour, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	r.url = serveHTTP(t, srv, rt)
	return r
}

func (r *accessRig) client(token string) *sdk.Client {
	c, err := sdk.NewClient(r.url, token)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// cuttableConn records the client's TCP connections, so that a test can
// cut them as a network failure would: no WebSocket close frame.
type cuttableConn struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (c *cuttableConn) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		c.mu.Lock()
		c.conns = append(c.conns, conn)
		c.mu.Unlock()
	}
	return conn, err
}

func (c *cuttableConn) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
}

// shell starts a session for the user and opens a tunnel to it, read up to
// the agent's SSH banner; cut breaks the tunnel's connection.
func (r *accessRig) shell(user string) (sdk.Session, *sdk.Tunnel, func()) {
	r.t.Helper()
	ctx := testutil.Context(r.t, testutil.WaitLong)
	c := r.client(r.tokens[user])
	sess, err := c.CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	cc := &cuttableConn{}
	c.HTTP = &http.Client{Transport: &http.Transport{DialContext: cc.dial}}
	tunnel, err := c.Connect(ctx, sess.ID)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { tunnel.Close() })
	// The agent's SSH banner, a line; then it waits for the client's.
	var banner []byte
	_ = tunnel.SetReadDeadline(time.Now().Add(testutil.WaitShort))
	for !bytes.HasSuffix(banner, []byte("\n")) {
		b := make([]byte, 1)
		if _, err := tunnel.Read(b); err != nil {
			r.t.Fatalf("tunnel: read %q, %v; want the agent's SSH banner", banner, err)
		}
		banner = append(banner, b...)
	}
	if !bytes.HasPrefix(banner, []byte("SSH-")) {
		r.t.Fatalf("tunnel: read %q; want the agent's SSH banner", banner)
	}
	_ = tunnel.SetReadDeadline(time.Time{})
	return sess, tunnel, cc.cut
}

// waitSession polls the store until the session satisfies cond.
func (r *accessRig) waitSession(t *testing.T, id, what string, cond func(store.Session) bool) store.Session {
	t.Helper()
	var s store.Session
	testutil.Eventually(t, testutil.WaitMedium, "session "+id+" "+what, func() bool {
		var err error
		s, err = r.st.Session(context.Background(), id)
		return err == nil && cond(s)
	})
	return s
}

func statusOf(err error) int {
	var e *sdk.Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// The store holds no secret that opens an agent: every value of the
// sessions table is tried against the running session's agent, as someone
// who read the database file would.
func TestStoreHoldsNoAgentSecret(t *testing.T) {
	t.Parallel()
	r := newAccessRig(t)
	sess, _, _ := r.shell("dev")
	db, err := sql.Open("sqlite", r.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT * FROM sessions WHERE id = ?`, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	cols, _ := rows.Columns()
	var values []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			switch v := v.(type) {
			case string:
				values = append(values, v)
			case []byte:
				values = append(values, string(v))
			}
		}
	}
	rows.Close()
	if len(values) == 0 {
		t.Fatal("read nothing of the session's row")
	}
	for _, v := range values {
		if len(v) < 16 {
			continue // ids, states, names: too short to be a secret
		}
		if c, err := runtimetest.Dial(t, r.rt, runtime.Spec{SessionID: sess.ID, User: "dev", AgentSecret: v}); err == nil {
			c.Close()
			t.Errorf("the sessions table's value %q opens the session's agent", v)
		}
	}
	// The secret the server uses works (so the attempts above were real),
	// and is nowhere in the database files.
	secret := agentSecret(processKey(), sess.ID)
	c, err := runtimetest.Dial(t, r.rt, runtime.Spec{SessionID: sess.ID, User: "dev", AgentSecret: secret})
	if err != nil {
		t.Fatalf("the derived secret does not open the agent: %v", err)
	}
	c.Close()
	for _, p := range []string{r.db, r.db + "-wal"} {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the agent secret", filepath.Base(p))
		}
	}
}

// The key file is made 0600 once and read back the same; one others can
// read, a link or a truncated one is refused.
func TestLoadAgentKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.key")
	key, err := LoadAgentKey(path)
	if err != nil || len(key) != AgentKeySize {
		t.Fatalf("LoadAgentKey(new) = %x, %v", key, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	again, err := LoadAgentKey(path)
	if err != nil || !bytes.Equal(again, key) {
		t.Fatalf("LoadAgentKey(again) = %x, %v; want %x", again, err, key)
	}
	if agentSecret(key, "s1") == agentSecret(key, "s2") || agentSecret(key, "s1") == agentSecret(again[:31], "s1") {
		t.Fatal("secrets do not depend on both the key and the session")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAgentKey(path); err == nil {
		t.Error("LoadAgentKey accepted a key readable by others")
	}
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAgentKey(link); err == nil {
		t.Error("LoadAgentKey followed a link")
	}
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(short, key[:10], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAgentKey(short); err == nil {
		t.Error("LoadAgentKey accepted a truncated key")
	}
}
