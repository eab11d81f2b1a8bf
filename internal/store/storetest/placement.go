package storetest

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// testCapacity checks that SetCapacity replaces one backend's rows and no
// other's, that ListCapacity orders by backend, type and region in byte
// order, and that a report the store cannot record changes nothing.
func testCapacity(t *testing.T, ctx context.Context, s store.Store) {
	if list, err := s.ListCapacity(ctx); err != nil || len(list) != 0 {
		t.Fatalf("ListCapacity of a new store = %+v, %v; want none", list, err)
	}
	set := func(backend string, caps ...store.Capacity) {
		t.Helper()
		if err := s.SetCapacity(ctx, backend, caps); err != nil {
			t.Fatal(err)
		}
	}
	want := func(what string, want ...store.Capacity) {
		t.Helper()
		if list, err := s.ListCapacity(ctx); err != nil || !reflect.DeepEqual(list, want) {
			t.Errorf("ListCapacity %s =\n%+v, %v; want\n%+v", what, list, err, want)
		}
	}
	set("west",
		store.Capacity{Type: "t4", Region: "westus3", Total: 2},
		store.Capacity{Type: "a100", Region: "westus3", Total: 8},
		store.Capacity{Type: "a100", Region: "eastus", Total: 4},
		store.Capacity{Type: "h100", Region: "westus3", Total: 0}, // known, none offered
	)
	// Backend in caps is ignored: the argument names the backend.
	set("local", store.Capacity{Backend: "west", Type: "t4", Region: "local", Total: 1})
	set("Z", store.Capacity{Type: "t4", Region: "local", Total: 3}) // "Z" sorts before "local"
	want("of three backends",
		store.Capacity{Backend: "Z", Type: "t4", Region: "local", Total: 3},
		store.Capacity{Backend: "local", Type: "t4", Region: "local", Total: 1},
		store.Capacity{Backend: "west", Type: "a100", Region: "eastus", Total: 4},
		store.Capacity{Backend: "west", Type: "a100", Region: "westus3", Total: 8},
		store.Capacity{Backend: "west", Type: "h100", Region: "westus3", Total: 0},
		store.Capacity{Backend: "west", Type: "t4", Region: "westus3", Total: 2},
	)
	// A new report of west replaces all of west's rows, and only those.
	set("west", store.Capacity{Type: "a100", Region: "westus3", Total: 6})
	set("Z")
	after := []store.Capacity{
		{Backend: "local", Type: "t4", Region: "local", Total: 1},
		{Backend: "west", Type: "a100", Region: "westus3", Total: 6},
	}
	want("after west changed and Z reported nothing", after...)

	for _, bad := range [][]store.Capacity{
		{{Type: "a100", Region: "westus3", Total: 1}, {Type: "t4", Region: "westus3", Total: -1}},
		{{Type: "", Region: "westus3", Total: 1}},
		{{Type: "a100", Region: "westus3", Total: 1}, {Type: "a100", Region: "westus3", Total: 2}},
	} {
		if err := s.SetCapacity(ctx, "west", bad); err == nil {
			t.Errorf("SetCapacity(%+v) succeeded", bad)
		}
	}
	want("after refused reports", after...)
}

// testCapacityInTx checks that SetCapacity takes part in the caller's
// transaction: seen inside it, rolled back with it.
func testCapacityInTx(t *testing.T, ctx context.Context, s store.Store) {
	four := []store.Capacity{{Backend: "local", Type: "t4", Region: "local", Total: 4}}
	if err := s.SetCapacity(ctx, "local", four); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Store) error {
		if err := tx.SetCapacity(ctx, "local", []store.Capacity{{Type: "t4", Region: "local", Total: 2}}); err != nil {
			return err
		}
		if list, err := tx.ListCapacity(ctx); err != nil || len(list) != 1 || list[0].Total != 2 {
			t.Errorf("ListCapacity inside the transaction = %+v, %v; want its own write", list, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	if list, err := s.ListCapacity(ctx); err != nil || !reflect.DeepEqual(list, four) {
		t.Errorf("ListCapacity after rollback = %+v, %v; want %+v", list, err, four)
	}
}

// testPlacement follows a session's placement through its life: created
// with a backend and a GPU count but no devices, given its devices, node
// and handle by the move to running as the runtime reported them (in their
// order), counted while active, and kept, all of it, after the end.
func testPlacement(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	x := store.Session{ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting, GPUType: "a100", Region: "westus3",
		Backend: "west", GPUCount: 2}
	if err := s.CreateSession(ctx, &x); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s1"); got.Backend != "west" || got.GPUCount != 2 || got.GPUs != nil || got.Node != "" || got.Handle != "" {
		t.Fatalf("created session = %+v, want on west with 2 GPUs, no devices, node or handle yet", got)
	}
	placed := []string{"GPU-b", "GPU-a"} // not sorted: the runtime's order
	running, err := s.TransitionSession(ctx, "s1", sdk.StateRunning, func(x *store.Session) {
		x.GPUs, x.Node, x.Handle = placed, "node-7", "devgpu-s1"
		// A move does not write the request or the count.
		x.GPUType, x.Backend, x.GPUCount = "t4", "local", 9
	})
	if err != nil {
		t.Fatal(err)
	}
	stored := mustGet(t, ctx, s, "s1")
	if !reflect.DeepEqual(running, stored) {
		t.Errorf("TransitionSession returned\n%+v\nstored\n%+v", running, stored)
	}
	if !slices.Equal(stored.GPUs, placed) || stored.Node != "node-7" || stored.Handle != "devgpu-s1" ||
		stored.GPUType != "a100" || stored.Backend != "west" || stored.GPUCount != 2 {
		t.Errorf("running session = %+v, want devices %v on node-7 as devgpu-s1, still a100 on west with 2", stored, placed)
	}
	active, err := s.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil || len(active) != 1 || !reflect.DeepEqual(active[0], stored) {
		t.Errorf("active sessions = %+v, %v; want s1 as stored", active, err)
	}

	// A move with no devices keeps those recorded.
	if _, err := s.TransitionSession(ctx, "s1", sdk.StateStopping, func(x *store.Session) { x.GPUs = nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.EndSession(ctx, "s1", sdk.StateEnded, sdk.ReasonClosed, time.Time{}); err != nil {
		t.Fatal(err)
	}
	ended := mustGet(t, ctx, s, "s1")
	if !slices.Equal(ended.GPUs, placed) || ended.Node != "node-7" || ended.Handle != "devgpu-s1" ||
		ended.Backend != "west" || ended.GPUCount != 2 {
		t.Errorf("ended session = %+v, want its placement kept", ended)
	}
	if list, _ := s.ListSessions(ctx, store.SessionFilter{ActiveOnly: true}); len(list) != 0 {
		t.Errorf("active sessions after the end = %+v, want none", list)
	}
	// The devices serve the next session; the ended one keeps its record.
	mustSession(t, ctx, s, "s2", p, u, 0)
	if err := s.UpdateSession(ctx, &store.Session{ID: "s2", State: sdk.StateRunning, GPUs: []string{"GPU-a"}, Node: "node-7"}); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s2"); !slices.Equal(got.GPUs, []string{"GPU-a"}) || got.Node != "node-7" {
		t.Errorf("second session = %+v, want GPU-a on node-7", got)
	}
	if got := mustGet(t, ctx, s, "s1"); !reflect.DeepEqual(got, ended) {
		t.Errorf("ended session after its device served another =\n%+v; want\n%+v", got, ended)
	}
}

// testPlacementOrder checks that many devices read back in the order
// written, through every read, and that a new list replaces the old one
// in its own order.
func testPlacementOrder(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	// Neither in byte nor in numeric order.
	order := []string{"GPU-10", "GPU-2", "GPU-1", "GPU-11", "GPU-0", "GPU-9", "GPU-3", "GPU-12", "GPU-5", "GPU-4", "GPU-8", "GPU-7"}
	x := store.Session{ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateRunning, GPUType: "t4", Region: "local",
		GPUCount: len(order), GPUs: order}
	if err := s.CreateSession(ctx, &x); err != nil {
		t.Fatal(err)
	}
	check := func(what string, want []string) {
		t.Helper()
		if got := mustGet(t, ctx, s, "s1"); !slices.Equal(got.GPUs, want) {
			t.Errorf("Session %s: GPUs %v, want %v", what, got.GPUs, want)
		}
		for _, f := range []store.SessionFilter{{}, {ActiveOnly: true}, {ProjectID: p.ID}} {
			list, err := s.ListSessions(ctx, f)
			if err != nil || len(list) != 1 || !slices.Equal(list[0].GPUs, want) {
				t.Errorf("ListSessions(%+v) %s = %+v, %v; want GPUs %v", f, what, list, err, want)
			}
		}
	}
	check("as created", order)
	reversed := slices.Clone(order)
	slices.Reverse(reversed)
	upd := mustGet(t, ctx, s, "s1")
	upd.GPUs = reversed
	if err := s.UpdateSession(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	check("after an update in reverse", reversed)
	fewer := []string{"GPU-7", "GPU-99"}
	if _, err := s.TransitionSession(ctx, "s1", sdk.StateStopping, func(x *store.Session) { x.GPUs = fewer }); err != nil {
		t.Fatal(err)
	}
	check("after a move with fewer", fewer)
}
