package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// shortTTL is a lease lifetime the tests wait out: long enough that the
// statements a test makes while it holds the lease finish well within it.
const shortTTL = 300 * time.Millisecond

func mustReplica(t *testing.T, ctx context.Context, s store.Store, id string) store.Replica {
	t.Helper()
	r := store.Replica{ID: id, URL: "https://" + id + ".internal:8443", Version: "v-test"}
	if err := s.RegisterReplica(ctx, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func testReplicas(t *testing.T, ctx context.Context, s store.Store) {
	before := time.Now().Add(-time.Minute) // the store's clock may differ a little from ours
	r1 := mustReplica(t, ctx, s, "r1")
	if r1.HeartbeatAt.Before(before) || r1.StartedAt.Before(before) {
		t.Fatalf("RegisterReplica left times unset or wrong: %+v", r1)
	}
	r2 := mustReplica(t, ctx, s, "r2")
	if list, err := s.ListReplicas(ctx); err != nil || !reflect.DeepEqual(list, []store.Replica{r1, r2}) {
		t.Fatalf("ListReplicas = %+v, %v; want %+v", list, err, []store.Replica{r1, r2})
	}

	// Registering again replaces the record: a restarted process with a
	// new address, or one declared dead that came back.
	started := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	again := store.Replica{ID: "r2", URL: "https://10.0.0.9:8443", Version: "v2", StartedAt: started}
	if err := s.RegisterReplica(ctx, &again); err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListReplicas(ctx); err != nil || len(list) != 2 || !reflect.DeepEqual(list[1], again) || !list[1].StartedAt.Equal(started) {
		t.Errorf("ListReplicas after registering r2 again = %+v, %v; want r2 as %+v", list, err, again)
	}
	if err := s.RegisterReplica(ctx, &store.Replica{}); err == nil {
		t.Errorf("RegisterReplica(no id) succeeded")
	}

	// The heartbeat moves forward by the store's clock.
	testutil.Eventually(t, testutil.WaitShort, "a heartbeat later than registration", func() bool {
		if err := s.HeartbeatReplica(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		list, err := s.ListReplicas(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return list[0].HeartbeatAt.After(r1.HeartbeatAt)
	})
	if err := s.HeartbeatReplica(ctx, "r9"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("HeartbeatReplica(unknown) = %v, want ErrNotFound", err)
	}
}

func testStaleReplicas(t *testing.T, ctx context.Context, s store.Store) {
	mustReplica(t, ctx, s, "r1")
	mustReplica(t, ctx, s, "r2")
	if stale, err := s.StaleReplicas(ctx, time.Hour); err != nil || len(stale) != 0 {
		t.Fatalf("StaleReplicas(1h) right after registering = %+v, %v; want none", stale, err)
	}
	const maxAge = time.Second
	testutil.Eventually(t, testutil.WaitMedium, "both replicas stale", func() bool {
		stale, err := s.StaleReplicas(ctx, maxAge)
		if err != nil {
			t.Fatal(err)
		}
		return len(stale) == 2
	})
	if err := s.HeartbeatReplica(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	stale, err := s.StaleReplicas(ctx, maxAge)
	if err != nil || len(stale) != 1 || stale[0].ID != "r1" {
		t.Errorf("StaleReplicas after r2's heartbeat = %+v, %v; want r1 alone", stale, err)
	}
}

func testLeases(t *testing.T, ctx context.Context, s store.Store) {
	if _, err := s.Lease(ctx, "leader"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Lease(never taken) = %v, want ErrNotFound", err)
	}
	a, err := s.AcquireLease(ctx, "leader", "a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "leader" || a.Holder != "a" || a.Epoch != 1 || a.ExpiresAt.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("AcquireLease(free) = %+v; want a's, epoch 1, about an hour from now", a)
	}
	renewed, err := s.AcquireLease(ctx, "leader", "a", 2*time.Hour)
	if err != nil || renewed.Epoch != 1 || !renewed.ExpiresAt.After(a.ExpiresAt) {
		t.Errorf("AcquireLease(renew) = %+v, %v; want epoch 1, later than %v", renewed, err, a.ExpiresAt)
	}
	if _, err := s.AcquireLease(ctx, "leader", "b", time.Hour); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("AcquireLease(held by another) = %v, want ErrLeaseHeld", err)
	}
	// Another name is another lease.
	if other, err := s.AcquireLease(ctx, "capacity", "b", time.Hour); err != nil || other.Epoch != 1 {
		t.Errorf("AcquireLease(other name) = %+v, %v; want b's at epoch 1", other, err)
	}
	if got, err := s.Lease(ctx, "leader"); err != nil || !reflect.DeepEqual(got, renewed) {
		t.Errorf("Lease = %+v, %v; want %+v", got, err, renewed)
	}

	// Only the holder releases; then the lease is free and changes hands.
	if err := s.ReleaseLease(ctx, "leader", "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquireLease(ctx, "leader", "b", time.Hour); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("AcquireLease after another's release = %v, want ErrLeaseHeld: b held nothing to release", err)
	}
	if err := s.ReleaseLease(ctx, "leader", "a"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lease(ctx, "leader"); err != nil || got.Holder != "" || got.Epoch != 1 {
		t.Errorf("Lease after release = %+v, %v; want no holder, epoch 1", got, err)
	}
	b, err := s.AcquireLease(ctx, "leader", "b", time.Hour)
	if err != nil || b.Holder != "b" || b.Epoch != 2 {
		t.Errorf("AcquireLease(released) = %+v, %v; want b's at epoch 2", b, err)
	}
	// A holder that released and takes the lease again holds a new term.
	if err := s.ReleaseLease(ctx, "leader", "b"); err != nil {
		t.Fatal(err)
	}
	if b, err := s.AcquireLease(ctx, "leader", "b", time.Hour); err != nil || b.Epoch != 3 {
		t.Errorf("AcquireLease(released, same holder) = %+v, %v; want epoch 3", b, err)
	}

	for _, bad := range []struct {
		holder string
		ttl    time.Duration
	}{{"", time.Hour}, {"a", 0}, {"a", -time.Second}} {
		if _, err := s.AcquireLease(ctx, "other", bad.holder, bad.ttl); err == nil {
			t.Errorf("AcquireLease(holder %q, ttl %v) succeeded", bad.holder, bad.ttl)
		}
	}
}

// waitExpired waits until the lease holder holds at epoch has expired by
// the store's clock, which only the fence can tell.
func waitExpired(t *testing.T, ctx context.Context, s store.Store, l store.Lease) {
	t.Helper()
	testutil.Eventually(t, testutil.WaitMedium, fmt.Sprintf("lease %s of %s to expire", l.Name, l.Holder), func() bool {
		err := s.CheckLease(ctx, l.Name, l.Holder, l.Epoch)
		if err != nil && !errors.Is(err, store.ErrFenced) {
			t.Fatal(err)
		}
		return err != nil
	})
}

func testLeaseExpiry(t *testing.T, ctx context.Context, s store.Store) {
	a, err := s.AcquireLease(ctx, "leader", "a", shortTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckLease(ctx, "leader", "a", a.Epoch); err != nil {
		t.Fatalf("CheckLease right after acquiring = %v", err)
	}
	// Expiry is by the store's clock: wait for it, polling.
	waitExpired(t, ctx, s, a)
	// An expired lease is free for anyone; its holder may also renew it
	// while nobody else took it (no one acted meanwhile: same epoch).
	again, err := s.AcquireLease(ctx, "leader", "a", shortTTL)
	if err != nil || again.Epoch != a.Epoch {
		t.Fatalf("AcquireLease(own, expired) = %+v, %v; want epoch %d kept", again, err, a.Epoch)
	}
	waitExpired(t, ctx, s, again)
	b, err := s.AcquireLease(ctx, "leader", "b", time.Hour)
	if err != nil || b.Holder != "b" || b.Epoch != a.Epoch+1 {
		t.Fatalf("AcquireLease(expired) = %+v, %v; want b's at epoch %d", b, err, a.Epoch+1)
	}
	if err := s.CheckLease(ctx, "leader", "a", a.Epoch); !errors.Is(err, store.ErrFenced) {
		t.Errorf("CheckLease(old holder) = %v, want ErrFenced", err)
	}
	if _, err := s.AcquireLease(ctx, "leader", "a", shortTTL); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("AcquireLease(old holder, taken over) = %v, want ErrLeaseHeld", err)
	}
}

// testLeaseRace has replicas race for a lease, round after round: exactly
// one wins each round, and the epoch rises by one each time the lease
// changes hands.
func testLeaseRace(t *testing.T, ctx context.Context, s store.Store) {
	// The race must end before the winner's lease does, even on a slow
	// machine where the engine runs the racers one after another.
	const racers, ttl = 8, 2 * time.Second
	var prev store.Lease
	for round := range 3 {
		if round > 0 {
			waitExpired(t, ctx, s, prev)
		}
		var wins atomic.Int32
		var winner store.Lease
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			holder := fmt.Sprintf("round%d-replica%d", round, i) // the previous winner does not race
			wg.Go(func() {
				<-start
				l, err := s.AcquireLease(ctx, "leader", holder, ttl)
				switch {
				case err == nil:
					wins.Add(1)
					mu.Lock()
					winner = l
					mu.Unlock()
				case !errors.Is(err, store.ErrLeaseHeld):
					t.Errorf("round %d: AcquireLease(%s) = %v, want success or ErrLeaseHeld", round, holder, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d replicas took the lease, want exactly 1", round, n)
		}
		if want := int64(round + 1); winner.Epoch != want {
			t.Errorf("round %d: the winner holds epoch %d, want %d", round, winner.Epoch, want)
		}
		if got, err := s.Lease(ctx, "leader"); err != nil || got.Holder != winner.Holder || got.Epoch != winner.Epoch {
			t.Errorf("round %d: Lease = %+v, %v; want the winner's %+v", round, got, err, winner)
		}
		prev = winner
	}
}

func testCheckLease(t *testing.T, ctx context.Context, s store.Store) {
	if err := s.CheckLease(ctx, "leader", "a", 1); !errors.Is(err, store.ErrFenced) {
		t.Errorf("CheckLease(never taken) = %v, want ErrFenced", err)
	}
	a, err := s.AcquireLease(ctx, "leader", "a", shortTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.InTx(ctx, func(tx store.Store) error { return tx.CheckLease(ctx, "leader", "a", a.Epoch) }); err != nil {
		t.Errorf("CheckLease(holder, in a transaction) = %v", err)
	}
	for _, bad := range []struct {
		holder string
		epoch  int64
	}{{"b", a.Epoch}, {"a", a.Epoch + 1}, {"a", a.Epoch - 1}} {
		if err := s.CheckLease(ctx, "leader", bad.holder, bad.epoch); !errors.Is(err, store.ErrFenced) {
			t.Errorf("CheckLease(%s at epoch %d) = %v, want ErrFenced", bad.holder, bad.epoch, err)
		}
	}

	// Another holder takes the expired lease over: a transaction of the
	// old holder that checks its fence is refused and writes nothing.
	waitExpired(t, ctx, s, a)
	b, err := s.AcquireLease(ctx, "leader", "b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	err = s.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateUser(ctx, &store.User{Name: "decided-by-a"}); err != nil {
			return err
		}
		return tx.CheckLease(ctx, "leader", "a", a.Epoch)
	})
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("a fenced transaction = %v, want ErrFenced", err)
	}
	if _, err := s.UserByName(ctx, "decided-by-a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the fenced transaction's write is there (%v); want it rolled back", err)
	}
	if err := s.CheckLease(ctx, "leader", "b", b.Epoch); err != nil {
		t.Errorf("CheckLease(new holder) = %v", err)
	}
}

// testFenceHoldsTakeover checks that a transaction that passed its fence
// keeps the lease from changing hands until it ends, even when the lease
// expires meanwhile: the next holder acts only after the old one's last
// decision is committed.
func testFenceHoldsTakeover(t *testing.T, ctx context.Context, s store.Store) {
	a, err := s.AcquireLease(ctx, "leader", "a", shortTTL)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		lease    store.Lease
		err      error
		whileOld bool // returned while the old holder's transaction was open
	}
	var open atomic.Bool
	taken := make(chan result, 1)
	err = s.InTx(ctx, func(tx store.Store) error {
		open.Store(true)
		if err := tx.CheckLease(ctx, "leader", "a", a.Epoch); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, &store.User{Name: "decided-by-a"}); err != nil {
			return err
		}
		go func() {
			l, err := s.AcquireLease(ctx, "leader", "b", time.Hour)
			taken <- result{l, err, open.Load()}
		}()
		// The lease runs out while this transaction is open.
		waitExpired(t, ctx, tx, a)
		select {
		case r := <-taken:
			t.Errorf("AcquireLease by another holder returned (%+v, %v) while the fenced transaction was open", r.lease, r.err)
			taken <- r
		default:
		}
		open.Store(false)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r := <-taken
	if r.err != nil || r.lease.Holder != "b" || r.lease.Epoch != a.Epoch+1 || r.whileOld {
		t.Errorf("AcquireLease after the fenced transaction = %+v, %v (while open: %v); want b's at epoch %d after it",
			r.lease, r.err, r.whileOld, a.Epoch+1)
	}
	if _, err := s.UserByName(ctx, "decided-by-a"); err != nil {
		t.Errorf("the decision made under the fence: %v; want it committed", err)
	}
}

// attachFixture is a project, a user and two registered replicas.
type attachFixture struct {
	p      store.Project
	u      store.User
	r1, r2 store.Replica
}

func newAttachFixture(t *testing.T, ctx context.Context, s store.Store) attachFixture {
	return attachFixture{
		p:  mustProject(t, ctx, s, "ml"),
		u:  mustUser(t, ctx, s, "alice"),
		r1: mustReplica(t, ctx, s, "r1"),
		r2: mustReplica(t, ctx, s, "r2"),
	}
}

func mustAttach(t *testing.T, ctx context.Context, s store.Store, sessionID, replica string, userID int64) store.Attachment {
	t.Helper()
	a := store.Attachment{SessionID: sessionID, Replica: replica, UserID: userID}
	if err := s.AddAttachment(ctx, &a); err != nil {
		t.Fatal(err)
	}
	if a.ID == 0 || a.OpenedAt.IsZero() {
		t.Fatalf("AddAttachment left ID or OpenedAt unset: %+v", a)
	}
	return a
}

// checkAttached checks the session's attachment count and DetachedAt
// against its rows.
func checkAttached(t *testing.T, ctx context.Context, s store.Store, id string, want int, detachedAt time.Time) {
	t.Helper()
	x := mustGet(t, ctx, s, id)
	list, err := s.ListAttachments(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if x.Attachments != want || len(list) != want || !x.DetachedAt.Equal(detachedAt) {
		t.Errorf("session %s: Attachments %d, %d rows, DetachedAt %v; want %d, %d, %v",
			id, x.Attachments, len(list), x.DetachedAt, want, want, detachedAt)
	}
}

func testAttachments(t *testing.T, ctx context.Context, s store.Store) {
	f := newAttachFixture(t, ctx, s)
	mustSession(t, ctx, s, "s1", f.p, f.u, 1)
	a1 := mustAttach(t, ctx, s, "s1", "r1", f.u.ID)
	a2 := mustAttach(t, ctx, s, "s1", "r2", f.u.ID)
	checkAttached(t, ctx, s, "s1", 2, time.Time{})
	if list, err := s.ListAttachments(ctx, "s1"); err != nil || !reflect.DeepEqual(list, []store.Attachment{a1, a2}) {
		t.Errorf("ListAttachments = %+v, %v; want %+v", list, err, []store.Attachment{a1, a2})
	}

	at := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	if left, err := s.RemoveAttachment(ctx, a1.ID, at); err != nil || left != 1 {
		t.Errorf("RemoveAttachment(first) = %d, %v; want 1 left", left, err)
	}
	checkAttached(t, ctx, s, "s1", 1, time.Time{})
	if left, err := s.RemoveAttachment(ctx, a2.ID, at); err != nil || left != 0 {
		t.Errorf("RemoveAttachment(last) = %d, %v; want 0 left", left, err)
	}
	checkAttached(t, ctx, s, "s1", 0, at)
	// Removing one already gone is ErrNotFound (not "0 left", which would
	// read as the last shell closing) and changes nothing, the detach time
	// included.
	if left, err := s.RemoveAttachment(ctx, a2.ID, at.Add(time.Hour)); !errors.Is(err, store.ErrNotFound) || left != 0 {
		t.Errorf("RemoveAttachment(gone) = %d, %v; want 0, ErrNotFound", left, err)
	}
	checkAttached(t, ctx, s, "s1", 0, at)
	// Attaching again clears the detach time.
	a3 := mustAttach(t, ctx, s, "s1", "r1", f.u.ID)
	checkAttached(t, ctx, s, "s1", 1, time.Time{})

	// Refused: a session that is not running, one that does not exist,
	// a replica that is not registered. Nothing is recorded.
	queued := store.Session{ID: "q1", ProjectID: f.p.ID, UserID: f.u.ID, State: sdk.StateQueued}
	if err := s.CreateSession(ctx, &queued); err != nil {
		t.Fatal(err)
	}
	mustSession(t, ctx, s, "done", f.p, f.u, 1)
	mustEnd(t, ctx, s, "done")
	for _, bad := range []store.Attachment{
		{SessionID: "q1", Replica: "r1", UserID: f.u.ID},
		{SessionID: "done", Replica: "r1", UserID: f.u.ID},
		{SessionID: "nope", Replica: "r1", UserID: f.u.ID},
		{SessionID: "s1", Replica: "r9", UserID: f.u.ID},
	} {
		if err := s.AddAttachment(ctx, &bad); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("AddAttachment(%s via %s) = %v, want ErrNotFound", bad.SessionID, bad.Replica, err)
		}
	}
	checkAttached(t, ctx, s, "s1", 1, time.Time{})
	checkAttached(t, ctx, s, "q1", 0, time.Time{})

	// Inside a transaction, a rollback takes the attachment back.
	errRollback := errors.New("roll back")
	err := s.InTx(ctx, func(tx store.Store) error {
		if err := tx.AddAttachment(ctx, &store.Attachment{SessionID: "s1", Replica: "r2", UserID: f.u.ID}); err != nil {
			return err
		}
		if err := tx.AddAttachment(ctx, &store.Attachment{SessionID: "s1", Replica: "r9", UserID: f.u.ID}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("AddAttachment(unknown replica) in a transaction = %v, want ErrNotFound", err)
		}
		checkAttached(t, ctx, tx, "s1", 2, time.Time{})
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	checkAttached(t, ctx, s, "s1", 1, time.Time{})
	if list, err := s.ListAttachments(ctx, "s1"); err != nil || len(list) != 1 || list[0].ID != a3.ID {
		t.Errorf("ListAttachments after the rollback = %+v, %v; want a3 alone", list, err)
	}
}

func testLinks(t *testing.T, ctx context.Context, s store.Store) {
	f := newAttachFixture(t, ctx, s)
	mustSession(t, ctx, s, "s1", f.p, f.u, 1)
	if _, err := s.LinkOf(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LinkOf(no link) = %v, want ErrNotFound", err)
	}
	if err := s.SetLink(ctx, "s1", "r1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LinkOf(ctx, "s1"); err != nil || !reflect.DeepEqual(got, f.r1) {
		t.Errorf("LinkOf = %+v, %v; want %+v", got, err, f.r1)
	}
	// The agent linked again, through another replica.
	if err := s.SetLink(ctx, "s1", "r2"); err != nil {
		t.Fatal(err)
	}
	// The first replica's late cleanup does not clear the new link.
	if err := s.ClearLink(ctx, "s1", "r1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LinkOf(ctx, "s1"); err != nil || got.ID != "r2" {
		t.Errorf("LinkOf after another replica's ClearLink = %+v, %v; want r2", got, err)
	}
	if err := s.ClearLink(ctx, "s1", "r2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LinkOf(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LinkOf after ClearLink = %v, want ErrNotFound", err)
	}
	if err := s.SetLink(ctx, "nope", "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetLink(unknown session) = %v, want ErrNotFound", err)
	}
	if err := s.SetLink(ctx, "s1", "r9"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetLink(unknown replica) = %v, want ErrNotFound", err)
	}
	// In a transaction, the failed SetLink leaves the transaction usable.
	err := s.InTx(ctx, func(tx store.Store) error {
		if err := tx.SetLink(ctx, "s1", "r9"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("SetLink(unknown replica) in a transaction = %v, want ErrNotFound", err)
		}
		return tx.SetLink(ctx, "s1", "r1")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.LinkOf(ctx, "s1"); err != nil || got.ID != "r1" {
		t.Errorf("LinkOf = %+v, %v; want r1", got, err)
	}
}

func testRemoveReplica(t *testing.T, ctx context.Context, s store.Store) {
	f := newAttachFixture(t, ctx, s)
	for _, id := range []string{"s1", "s2", "s3"} {
		mustSession(t, ctx, s, id, f.p, f.u, 1)
	}
	mustAttach(t, ctx, s, "s1", "r1", f.u.ID)
	mustAttach(t, ctx, s, "s2", "r1", f.u.ID)
	mustAttach(t, ctx, s, "s2", "r1", f.u.ID)
	kept := mustAttach(t, ctx, s, "s2", "r2", f.u.ID)
	mustAttach(t, ctx, s, "s3", "r2", f.u.ID)
	for sessionID, replica := range map[string]string{"s1": "r1", "s3": "r2"} {
		if err := s.SetLink(ctx, sessionID, replica); err != nil {
			t.Fatal(err)
		}
	}

	at := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	changed, err := s.RemoveReplica(ctx, "r1", at)
	if err != nil || !reflect.DeepEqual(changed, []string{"s1", "s2"}) {
		t.Fatalf("RemoveReplica = %v, %v; want sessions s1, s2", changed, err)
	}
	checkAttached(t, ctx, s, "s1", 0, at) // the detach grace runs from at
	checkAttached(t, ctx, s, "s2", 1, time.Time{})
	checkAttached(t, ctx, s, "s3", 1, time.Time{})
	if list, err := s.ListAttachments(ctx, "s2"); err != nil || len(list) != 1 || list[0] != kept {
		t.Errorf("s2's attachments = %+v, %v; want r2's alone", list, err)
	}
	if _, err := s.LinkOf(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LinkOf(session linked to the removed replica) = %v, want ErrNotFound", err)
	}
	if got, err := s.LinkOf(ctx, "s3"); err != nil || got.ID != "r2" {
		t.Errorf("LinkOf(another replica's) = %+v, %v; want r2", got, err)
	}
	if list, err := s.ListReplicas(ctx); err != nil || len(list) != 1 || list[0].ID != "r2" {
		t.Errorf("ListReplicas = %+v, %v; want r2 alone", list, err)
	}

	// The removed replica, still running somewhere, learns it was
	// declared dead and can hold nothing until it registers again.
	if err := s.HeartbeatReplica(ctx, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("HeartbeatReplica(removed) = %v, want ErrNotFound", err)
	}
	if err := s.AddAttachment(ctx, &store.Attachment{SessionID: "s1", Replica: "r1", UserID: f.u.ID}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AddAttachment(removed replica) = %v, want ErrNotFound", err)
	}
	if err := s.SetLink(ctx, "s1", "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetLink(removed replica) = %v, want ErrNotFound", err)
	}
	// Two replicas that both saw it die may both remove it.
	if changed, err := s.RemoveReplica(ctx, "r1", at); err != nil || len(changed) != 0 {
		t.Errorf("RemoveReplica(again) = %v, %v; want nothing, no error", changed, err)
	}
	mustReplica(t, ctx, s, "r1")
	mustAttach(t, ctx, s, "s1", "r1", f.u.ID)
	checkAttached(t, ctx, s, "s1", 1, time.Time{})
}

// testConcurrentAttachments attaches and detaches from many goroutines
// through two replicas while one of them is removed: every session's
// count ends equal to its rows, and nothing deadlocks.
func testConcurrentAttachments(t *testing.T, s store.Store) {
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	f := newAttachFixture(t, ctx, s)
	sessions := []string{"s1", "s2", "s3"}
	for _, id := range sessions {
		mustSession(t, ctx, s, id, f.p, f.u, 1)
	}
	const workers, rounds = 8, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			replica := []string{"r1", "r2"}[w%2]
			for i := range rounds {
				a := store.Attachment{SessionID: sessions[(w+i)%len(sessions)], Replica: replica, UserID: f.u.ID}
				err := s.AddAttachment(ctx, &a)
				if errors.Is(err, store.ErrNotFound) && replica == "r1" {
					continue // removed
				}
				if err != nil {
					t.Errorf("AddAttachment(%s via %s) = %v", a.SessionID, replica, err)
					return
				}
				if i%3 == 0 {
					continue // left attached
				}
				if _, err := s.RemoveAttachment(ctx, a.ID, time.Time{}); err != nil && !(errors.Is(err, store.ErrNotFound) && replica == "r1") {
					t.Errorf("RemoveAttachment(%d) = %v", a.ID, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		if _, err := s.RemoveReplica(ctx, "r1", time.Time{}); err != nil {
			t.Errorf("RemoveReplica = %v", err)
		}
	})
	// Meanwhile the server's own read-modify-writes of the sessions (a
	// liveness mark), which carry the count they read, must not write
	// back a stale one.
	stop := make(chan struct{})
	var marks sync.WaitGroup
	marks.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, id := range sessions {
				err := s.InTx(ctx, func(tx store.Store) error {
					x, err := tx.Session(ctx, id)
					if err != nil {
						return err
					}
					x.LastSeenAt = time.Now()
					return tx.UpdateSession(ctx, &x)
				})
				if err != nil {
					t.Errorf("mark session %s seen: %v", id, err)
					return
				}
			}
		}
	})
	wg.Wait()
	close(stop)
	marks.Wait()
	total := 0
	for _, id := range sessions {
		x := mustGet(t, ctx, s, id)
		list, err := s.ListAttachments(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if x.Attachments != len(list) || (len(list) == 0) == x.DetachedAt.IsZero() {
			t.Errorf("session %s: Attachments %d, DetachedAt %v, %d rows; want the count of rows, detached when none",
				id, x.Attachments, x.DetachedAt, len(list))
		}
		for _, a := range list {
			if a.Replica == "r1" {
				t.Errorf("session %s keeps attachment %d of the removed replica r1", id, a.ID)
			}
		}
		total += len(list)
	}
	if total == 0 {
		t.Errorf("no attachment left at all; want r2's kept ones")
	}
}
