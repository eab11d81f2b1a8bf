package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// queueServer answers a waiting create with the queued session's first
// event, then drops the connection, as a server that dies does; waits on
// the queued session are dropped cuts times more, then answered.
type queueServer struct {
	mu      sync.Mutex
	cuts    int // waits still to drop
	waits   int
	stopped []string
}

func (q *queueServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	send := func(ev sdk.SessionEvent) {
		_ = json.NewEncoder(w).Encode(ev)
		w.(http.Flusher).Flush()
	}
	cut := func() {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/sessions":
		w.WriteHeader(http.StatusOK)
		send(sdk.SessionEvent{ID: "q1", Position: 2, Reason: "1 requests ahead of yours"})
		cut()
	case r.Method == http.MethodGet && r.URL.Path == "/api/v1/sessions/q1/wait":
		q.waits++
		if q.cuts > 0 {
			q.cuts--
			cut()
			return
		}
		w.WriteHeader(http.StatusOK)
		send(sdk.SessionEvent{ID: "q1", Position: 1, Reason: "all 1 t4 GPUs are in use"})
		send(sdk.SessionEvent{Session: &sdk.Session{ID: "q1", State: sdk.StateRunning}})
	case r.Method == http.MethodDelete && r.URL.Path == "/api/v1/sessions/q1":
		q.stopped = append(q.stopped, "q1")
		_ = json.NewEncoder(w).Encode(sdk.Session{ID: "q1", State: sdk.StateFailed})
	default:
		http.NotFound(w, r)
	}
}

// A queued request whose stream is cut waits on the same queued session,
// trying again until the server answers, and hears its place throughout.
func TestCreateWaitingReconnects(t *testing.T) {
	t.Parallel()
	q := &queueServer{cuts: 2}
	hs := httptest.NewServer(q)
	t.Cleanup(hs.Close)
	client, err := sdk.NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	var positions []int
	var reconnects []string
	sess, err := createWaiting(testutil.Context(t, testutil.WaitShort), client,
		sdk.CreateSessionRequest{Wait: sdk.Duration(time.Hour)},
		func(ev sdk.SessionEvent) { positions = append(positions, ev.Position) },
		func(id string) { reconnects = append(reconnects, id) })
	if err != nil || sess.ID != "q1" || sess.State != sdk.StateRunning {
		t.Fatalf("createWaiting = %+v, %v; want q1 running", sess, err)
	}
	if len(positions) != 2 || positions[0] != 2 || positions[1] != 1 {
		t.Errorf("positions heard %v, want [2 1]", positions)
	}
	if len(reconnects) != 3 || reconnects[0] != "q1" || q.waits != 3 {
		t.Errorf("reconnects %v over %d waits; want 3 tries to q1", reconnects, q.waits)
	}
	if len(q.stopped) != 0 {
		t.Errorf("a request that was served stopped its queued session")
	}
}

// A user who gives up while the CLI reconnects removes the queued session.
func TestCreateWaitingGiveUpWhileReconnecting(t *testing.T) {
	t.Parallel()
	q := &queueServer{cuts: 1 << 30}
	hs := httptest.NewServer(q)
	t.Cleanup(hs.Close)
	client, err := sdk.NewClient(hs.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testutil.Context(t, testutil.WaitShort))
	_, err = createWaiting(ctx, client, sdk.CreateSessionRequest{Wait: sdk.Duration(time.Hour)}, nil,
		func(string) { cancel() })
	if err != context.Canceled {
		t.Fatalf("createWaiting after Ctrl-C = %v, want context.Canceled", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.stopped) != 1 {
		t.Errorf("queued session stops %v, want q1 stopped once", q.stopped)
	}
}
