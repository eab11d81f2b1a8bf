package server

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Setting a warm pool to what it already is records nothing; a change
// records the pool it replaced and the new one, whole.
func TestAuditWarmPool(t *testing.T) {
	f := newFixture(t)
	set := func(size int) {
		t.Helper()
		if code, body := f.call(f.admin, http.MethodPut, "/api/v1/pools", sdk.WarmPool{Project: "default", GPUType: "t4", Size: size}); code != http.StatusOK {
			t.Fatalf("set pool size %d: %d %s", size, code, body)
		}
	}
	set(1)
	set(1)
	set(0) // removed: no ready session outlives the test
	events, err := f.srv.store.ListAudit(context.Background(), store.AuditFilter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var pools []store.AuditEvent
	for _, e := range events {
		if e.Action == "pool.set" {
			pools = append(pools, e)
		}
	}
	if len(pools) != 2 {
		t.Fatalf("create, same again, remove wrote %d pool.set events, want 2: %+v", len(pools), pools)
	}
	one := sdk.WarmPool{Project: "default", GPUType: "t4", Size: 1}
	for _, e := range pools {
		var before, after *sdk.WarmPool
		_ = json.Unmarshal([]byte(e.Before), &before)
		_ = json.Unmarshal([]byte(e.After), &after)
		switch {
		case before == nil && after != nil && *after == one: // created
		case after == nil && before != nil && *before == one: // removed
		default:
			t.Errorf("pool.set before %q after %q, want the whole pool on the side it exists", e.Before, e.After)
		}
	}
}
