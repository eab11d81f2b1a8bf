package storetest

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Queued requests are queued sessions: they keep the request as asked,
// hold no GPU, and a project's queue is FIFO by (CreatedAt, ID), each
// project on its own. Placing the head and moving it on moves everyone up.
func testQueue(t *testing.T, ctx context.Context, s store.Store) {
	u, ml, cv := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "cv")
	mustSession(t, ctx, s, "busy", ml, u, 1)
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	queued := func(id string, p store.Project, created time.Time) store.Session {
		t.Helper()
		x := store.Session{ID: id, ProjectID: p.ID, Project: p.Name, UserID: u.ID, User: u.Name, State: sdk.StateQueued,
			GPUType: "t4", GPUCount: 1, Image: "python", DetachGrace: time.Minute, CreatedAt: created,
			WaitUntil: created.Add(time.Hour), QueueReason: "all 1 t4 GPUs are in use"}
		if err := s.CreateSession(ctx, &x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	// q-b and q-a were queued in the same microsecond: the id breaks the tie.
	first := queued("q-c", ml, at)
	queued("q-b", ml, at.Add(time.Second))
	queued("q-a", ml, at.Add(time.Second))
	queued("q-d", ml, at.Add(2*time.Second))
	queued("q-z", cv, at.Add(-time.Hour))

	// Every field of the request comes back as written, and no GPU.
	got := mustGet(t, ctx, s, "q-c")
	if got.GPUs != nil || !reflect.DeepEqual(got, first) {
		t.Errorf("queued session =\n%+v; want\n%+v", got, first)
	}
	positions := func(want map[string]int) {
		t.Helper()
		for id, w := range want {
			if n, err := s.QueuePosition(ctx, id); err != nil || n != w {
				t.Errorf("QueuePosition(%s) = %d, %v; want %d", id, n, err, w)
			}
		}
	}
	positions(map[string]int{"q-c": 1, "q-a": 2, "q-b": 3, "q-d": 4, "q-z": 1, "busy": 0, "nobody": 0})
	list, err := s.ListSessions(ctx, store.SessionFilter{ProjectID: ml.ID, State: sdk.StateQueued})
	if err != nil {
		t.Fatal(err)
	}
	if ids := queueIDs(list); !reflect.DeepEqual(ids, []string{"q-c", "q-a", "q-b", "q-d"}) {
		t.Errorf("queued sessions of ml = %v, want FIFO q-c q-a q-b q-d", ids)
	}
	if list, _ := s.ListSessions(ctx, store.SessionFilter{ProjectID: ml.ID, State: sdk.StateQueued}); len(list) != 4 || list[0].GPUs != nil {
		t.Errorf("queued sessions of ml = %+v, want 4 without devices", list)
	}

	// UpdateQueued writes the request's fields and no others.
	placed := got
	placed.GPUType, placed.Region, placed.Image = "t4", "local", "docker.io/library/python:3"
	placed.Backend, placed.GPUCount = "west", 2
	placed.QueueReason, placed.ServedBy, placed.WaitUntil = "", "", at.Add(2*time.Hour)
	ignored := placed
	ignored.State, ignored.Attachments, ignored.EndReason, ignored.Error = sdk.StateRunning, 3, "x", "y"
	ignored.GPUs, ignored.Node, ignored.Handle = []string{"g"}, "n", "h"
	if err := s.UpdateQueued(ctx, &ignored); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "q-c"); !reflect.DeepEqual(got, placed) {
		t.Errorf("after UpdateQueued =\n%+v; want\n%+v", got, placed)
	}
	if err := s.UpdateQueued(ctx, &store.Session{ID: "busy"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateQueued(running session) = %v, want ErrConflict", err)
	}
	if err := s.UpdateQueued(ctx, &store.Session{ID: "q-a", GPUCount: -1}); err == nil {
		t.Errorf("UpdateQueued(GPUCount -1) succeeded")
	}
	if err := s.UpdateQueued(ctx, &store.Session{ID: "nobody"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateQueued(unknown) = %v, want ErrNotFound", err)
	}

	// The head is admitted (its GPUs freed by the end of busy): everyone
	// behind it moves up, and it leaves the queue, placed as UpdateQueued
	// wrote; its devices come when the runtime starts it.
	mustEnd(t, ctx, s, "busy")
	if _, err := s.TransitionSession(ctx, "q-c", sdk.StateStarting, nil); err != nil {
		t.Fatal(err)
	}
	positions(map[string]int{"q-c": 0, "q-a": 1, "q-b": 2, "q-d": 3, "q-z": 1})
	if got := mustGet(t, ctx, s, "q-c"); got.State != sdk.StateStarting || got.GPUs != nil || got.Backend != "west" || got.GPUCount != 2 {
		t.Errorf("admitted head = %+v, want starting on west with 2 GPUs, no devices yet", got)
	}
	// One in the middle gives up.
	if err := s.EndSession(ctx, "q-b", sdk.StateFailed, "gave_up", at.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	positions(map[string]int{"q-a": 1, "q-b": 0, "q-d": 2})
	if got := mustGet(t, ctx, s, "q-b"); got.State != sdk.StateFailed || got.GPUs != nil || got.QueueReason == "" {
		t.Errorf("queued session that gave up = %+v, want failed, no GPUs, its last reason kept", got)
	}
}

func queueIDs(list []store.Session) []string {
	var ids []string
	for _, x := range list {
		ids = append(ids, x.ID)
	}
	return ids
}
