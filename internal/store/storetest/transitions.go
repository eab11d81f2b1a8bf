package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// testTransitionTable moves a session from every state to every state and
// checks that the store does exactly what lifecycle.Check allows: a legal
// move is written, an illegal one is refused with an error that is both a
// *lifecycle.IllegalMove and ErrConflict, and changes nothing.
func testTransitionTable(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	n := 0
	for _, from := range lifecycle.States {
		for _, to := range lifecycle.States {
			n++
			id := fmt.Sprintf("s%d", n)
			x := store.Session{ID: id, ProjectID: p.ID, UserID: u.ID, State: from, GPUType: "t4", Region: "local"}
			if lifecycle.Final(from) {
				x.EndedAt, x.EndReason = time.Now(), sdk.ReasonClosed
			}
			if err := s.CreateSession(ctx, &x); err != nil {
				t.Fatal(err)
			}
			before := mustGet(t, ctx, s, id)
			got, err := s.TransitionSession(ctx, id, to, func(x *store.Session) { x.Error = "changed" })
			if lifecycle.Check(from, to) == nil {
				if err != nil {
					t.Errorf("%s → %s: %v, want the move", from, to, err)
					continue
				}
				stored := mustGet(t, ctx, s, id)
				if stored.State != to || got.State != to || stored.Error != "changed" {
					t.Errorf("%s → %s: stored %s (error %q), returned %s", from, to, stored.State, stored.Error, got.State)
				}
				continue
			}
			var im *lifecycle.IllegalMove
			if !errors.As(err, &im) || im.From != from || im.To != to || !errors.Is(err, store.ErrConflict) {
				t.Errorf("%s → %s: %v, want an IllegalMove that is ErrConflict", from, to, err)
			}
			if after := mustGet(t, ctx, s, id); !reflect.DeepEqual(after, before) {
				t.Errorf("%s → %s refused, but the session changed:\n%+v\nwas\n%+v", from, to, after, before)
			}
		}
	}
	if _, err := s.TransitionSession(ctx, "nope", sdk.StateRunning, nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TransitionSession(unknown) = %v, want ErrNotFound", err)
	}
}

// testTransitionSession walks one session through its life: the stop's
// reason, time, actor and end state are written when it enters stopping
// and are still there, unchanged, when it ends; it holds its GPUs until the
// end, and its record keeps them after.
func testTransitionSession(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	sess := mustSession(t, ctx, s, "s1", p, u, 2) // running
	stopAt := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	got, err := s.TransitionSession(ctx, "s1", sdk.StateStopping, func(x *store.Session) {
		x.EndReason, x.EndedAt, x.EndActor, x.EndState, x.Attachments = sdk.ReasonAdmin, stopAt, "bob", sdk.StateEnded, 0
	})
	if err != nil {
		t.Fatal(err)
	}
	stored := mustGet(t, ctx, s, "s1")
	if !reflect.DeepEqual(got, stored) {
		t.Errorf("returned\n%+v\nstored\n%+v", got, stored)
	}
	if stored.State != sdk.StateStopping || stored.EndReason != sdk.ReasonAdmin || !stored.EndedAt.Equal(stopAt) ||
		stored.EndActor != "bob" || stored.EndState != sdk.StateEnded {
		t.Errorf("stopping session = %+v", stored)
	}
	// Still holding its GPUs while it stops.
	if list, _ := s.ListSessions(ctx, store.SessionFilter{ActiveOnly: true}); len(list) != 1 || !reflect.DeepEqual(list[0].GPUs, sess.GPUs) || list[0].GPUCount != 2 {
		t.Errorf("active sessions while stopping = %+v", list)
	}
	// UpdateSession of a stopping session leaves the stop as it was.
	upd := stored
	upd.LastSeenAt, upd.EndReason = stopAt.Add(time.Minute), sdk.ReasonIdle
	if err := s.UpdateSession(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s1"); got.EndReason != sdk.ReasonAdmin {
		t.Errorf("UpdateSession changed the end reason to %s", got.EndReason)
	}
	ended, err := s.TransitionSession(ctx, "s1", sdk.StateEnded, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ended.EndReason != sdk.ReasonAdmin || !ended.EndedAt.Equal(stopAt) || ended.EndActor != "bob" {
		t.Errorf("ended session = %+v, want the stop's reason, time and actor", ended)
	}
	if got := mustGet(t, ctx, s, "s1"); got.State != sdk.StateEnded || !reflect.DeepEqual(got.GPUs, sess.GPUs) {
		t.Errorf("ended session = %+v, want ended with its GPUs kept", got)
	}
	if list, _ := s.ListSessions(ctx, store.SessionFilter{ActiveOnly: true}); len(list) != 0 {
		t.Errorf("active sessions after the end = %+v, want none", list)
	}

	// Entering stopping without a time stamps it now.
	mustSession(t, ctx, s, "s2", p, u, 1)
	before := time.Now().Add(-time.Second)
	got, err = s.TransitionSession(ctx, "s2", sdk.StateStopping, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.EndedAt.Before(before) {
		t.Errorf("stopping without a time: EndedAt %v, want now", got.EndedAt)
	}

	// EndSession passes through stopping where the table asks for it.
	mustSession(t, ctx, s, "s3", p, u, 1)
	if err := s.EndSession(ctx, "s3", sdk.StateEnded, sdk.ReasonClosed, stopAt); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s3"); got.State != sdk.StateEnded || got.EndReason != sdk.ReasonClosed || !got.EndedAt.Equal(stopAt) {
		t.Errorf("EndSession(running) = %+v", got)
	}
}

// testTransitionInTx shows that a move takes part in the caller's
// transaction: rolled back with it, and seen by what follows inside it.
func testTransitionInTx(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	mustSession(t, ctx, s, "s1", p, u, 1)
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Store) error {
		if _, err := tx.TransitionSession(ctx, "s1", sdk.StateStopping, nil); err != nil {
			return err
		}
		// A second move from running is refused: the first is seen.
		if _, err := tx.TransitionSession(ctx, "s1", sdk.StateStopping, nil); !errors.Is(err, store.ErrConflict) {
			t.Errorf("second stop in the transaction = %v, want ErrConflict", err)
		}
		if _, err := tx.TransitionSession(ctx, "s1", sdk.StateEnded, func(x *store.Session) { x.GPUs = []string{"other"} }); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s1"); got.State != sdk.StateRunning || !got.EndedAt.IsZero() || !reflect.DeepEqual(got.GPUs, devices("s1", 1)) {
		t.Errorf("after rollback: %+v, want running with its GPU", got)
	}
}
