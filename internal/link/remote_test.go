package link

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/testutil"
)

// linkEvents records what a hub's notify was told, in order.
type linkEvents struct {
	mu     sync.Mutex
	events []string
}

func (e *linkEvents) notify(sessionID string, linked bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, fmt.Sprintf("%s %v", sessionID, linked))
}

// of returns the events of one session.
func (e *linkEvents) of(sessionID string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.events {
		if ev == sessionID+" true" || ev == sessionID+" false" {
			out = append(out, ev)
		}
	}
	return out
}

// The hub tells its notify each link it accepts and each that ends: the
// agent leaving, the session stopped, the hub closing; never a refused one.
func TestNotifyTellsLinksAndTheirEnds(t *testing.T) {
	t.Parallel()
	th := newTestHub(t)
	events := &linkEvents{}
	th.SetNotify(events.notify)
	ctx := testutil.Context(t, testutil.WaitMedium)

	// The agent links, then leaves.
	ln := Listen(context.Background(), th.agentConfig("left"))
	if _, err := th.WaitLinked(ctx, "left"); err != nil {
		t.Fatal(err)
	}
	if got := events.of("left"); !slices.Equal(got, []string{"left true"}) {
		t.Errorf("events once linked: %q; want [left true]", got)
	}
	ln.Close()
	testutil.Eventually(t, testutil.WaitMedium, "the hub to tell that the link ended", func() bool {
		return slices.Equal(events.of("left"), []string{"left true", "left false"})
	})

	// The session is stopped.
	listen(t, th.agentConfig("stopped"))
	if _, err := th.WaitLinked(ctx, "stopped"); err != nil {
		t.Fatal(err)
	}
	th.Forget("stopped")
	if got := events.of("stopped"); !slices.Equal(got, []string{"stopped true", "stopped false"}) {
		t.Errorf("events after Forget: %q; want [stopped true, stopped false]", got)
	}

	// A refused agent is never told about.
	bad := th.agentConfig("refused")
	bad.Credential = "wrong"
	if err := acceptErr(t, listen(t, bad)); !errors.Is(err, ErrRefused) {
		t.Fatalf("agent with a wrong credential: %v; want ErrRefused", err)
	}
	if got := events.of("refused"); len(got) != 0 {
		t.Errorf("events of a refused agent: %q; want none", got)
	}

	// The hub closes with a link up.
	listen(t, th.agentConfig("closed"))
	if _, err := th.WaitLinked(ctx, "closed"); err != nil {
		t.Fatal(err)
	}
	th.Close()
	if got := events.of("closed"); !slices.Equal(got, []string{"closed true", "closed false"}) {
		t.Errorf("events after the hub closed: %q; want [closed true, closed false]", got)
	}
}

// hubRemote reaches the agents linked to another hub, as the server's
// relay to another replica does, and counts what it was asked.
type hubRemote struct {
	far            *testHub
	dials, reports atomic.Int32
}

func (r *hubRemote) Dial(ctx context.Context, sessionID string) (net.Conn, error) {
	r.dials.Add(1)
	return r.far.DialLocal(ctx, sessionID)
}

func (r *hubRemote) Report(_ context.Context, sessionID string) (Report, error) {
	r.reports.Add(1)
	if rep, ok := r.far.LocalReport(sessionID); ok {
		return rep, nil
	}
	return Report{}, fmt.Errorf("session %s is linked to no other replica: %w", sessionID, runtime.ErrNotFound)
}

// A hub whose session is linked to another replica waits for that link,
// dials through its Remote and gets the agent's report from there; a
// link of its own is used directly; a session linked nowhere is not found.
func TestHubFallsBackToItsRemote(t *testing.T) {
	t.Parallel()
	near, far := newTestHub(t), newTestHub(t)
	near.remotePoll = testutil.Poll
	remote := &hubRemote{far: far}
	near.SetRemote(remote)
	ctx := testutil.Context(t, testutil.WaitMedium)

	// A start waits on near while its agent links to far.
	waited := make(chan error, 1)
	var report Report
	go func() {
		var err error
		report, err = near.WaitLinked(ctx, "s1")
		waited <- err
	}()
	testutil.Eventually(t, testutil.WaitMedium, "the waiting hub to ask its remote", func() bool { return remote.reports.Load() > 0 })
	ln := listen(t, far.agentConfig("s1"))
	if err := <-waited; err != nil {
		t.Fatalf("WaitLinked for an agent linked to another replica: %v", err)
	}
	if report.Node != "node-a" {
		t.Errorf("report through the remote: %+v; want node-a's", report)
	}
	if near.Linked("s1") {
		t.Error("Linked reports a link held by another replica as this hub's")
	}
	roundTrip(t, near, ln, "s1")
	if remote.dials.Load() != 1 {
		t.Errorf("remote dials: %d; want 1", remote.dials.Load())
	}
	if _, err := near.DialLocal(ctx, "s1"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("DialLocal of a session linked elsewhere: %v; want runtime.ErrNotFound", err)
	}

	// Its own link is used without asking the remote.
	nearLn := listen(t, near.agentConfig("s2"))
	if _, err := near.WaitLinked(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	reports := remote.reports.Load()
	roundTrip(t, near, nearLn, "s2")
	if _, err := near.WaitLinked(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if remote.dials.Load() != 1 || remote.reports.Load() != reports {
		t.Errorf("remote asked for a session linked here: %d dials, %d more reports; want none", remote.dials.Load()-1, remote.reports.Load()-reports)
	}

	// Linked nowhere.
	if _, err := near.Dial(ctx, "nobody"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Dial of a session linked nowhere: %v; want runtime.ErrNotFound", err)
	}
}
