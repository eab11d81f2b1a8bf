package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

func testWarmPools(t *testing.T, ctx context.Context, s store.Store) {
	p := mustProject(t, ctx, s, "ml")
	for _, w := range []store.WarmPool{
		{ProjectID: p.ID, GPUType: "t4", Size: 2},
		{ProjectID: p.ID, GPUType: "a100", Image: "py", Size: 1},
		{ProjectID: p.ID, GPUType: "t4", Size: 3}, // resizes the first
	} {
		if err := s.SetWarmPool(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ListWarmPools(ctx)
	want := []store.WarmPool{
		{ProjectID: p.ID, Project: "ml", GPUType: "a100", Image: "py", Size: 1},
		{ProjectID: p.ID, Project: "ml", GPUType: "t4", Size: 3},
	}
	if err != nil || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ListWarmPools = %+v, %v; want %+v", got, err, want)
	}
	if err := s.SetWarmPool(ctx, store.WarmPool{ProjectID: p.ID, GPUType: "a100", Image: "py"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ListWarmPools(ctx); len(got) != 1 {
		t.Fatalf("size 0 did not remove the pool: %+v", got)
	}
	if err := s.SetWarmPool(ctx, store.WarmPool{ProjectID: p.ID, GPUType: "t4", Size: -1}); err == nil {
		t.Fatal("a negative size was accepted")
	}
}

func testClaimSession(t *testing.T, ctx context.Context, s store.Store) {
	pool, alice := mustUser(t, ctx, s, "pool"), mustUser(t, ctx, s, "alice")
	p := mustProject(t, ctx, s, "ml")
	sess := mustSession(t, ctx, s, "warm1", p, pool, 1)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.ClaimSession(ctx, sess.ID, alice.ID, pool.ID, at); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("claiming from the wrong user: %v, want ErrConflict", err)
	}
	if err := s.ClaimSession(ctx, sess.ID, pool.ID, alice.ID, at); err != nil {
		t.Fatal(err)
	}
	got, err := s.Session(ctx, sess.ID)
	if err != nil || got.User != "alice" || !got.StartedAt.Equal(at) || got.State != sdk.StateRunning {
		t.Fatalf("claimed session = %+v, %v", got, err)
	}
	if err := s.ClaimSession(ctx, sess.ID, pool.ID, alice.ID, at); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("claiming twice: %v, want ErrConflict", err)
	}
}
