package server

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/testutil"
)

// brokenRoles is a store whose membership reads fail, once failing is
// set, with the error of a real closed database: as if the database went
// away between reading the projects and the caller's role in them.
type brokenRoles struct {
	store.Store
	closed  store.Store
	failing atomic.Bool
}

func (b *brokenRoles) MemberRole(ctx context.Context, projectID, userID int64) (string, error) {
	if b.failing.Load() {
		return b.closed.MemberRole(ctx, projectID, userID)
	}
	return b.Store.MemberRole(ctx, projectID, userID)
}

// TestStoreErrorIsNotInvisible: when the store fails to say whether the
// caller is a member of a project, listing projects or warm pools answers
// 500, never an empty list or a 404 that hides the outage as "you may not
// see it".
func TestStoreErrorIsNotInvisible(t *testing.T) {
	ctx := testutil.Context(t, testutil.WaitLong)
	closed, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "closed.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	var broken *brokenRoles
	f := newFixture(t, func(c *Config) {
		broken = &brokenRoles{Store: c.Store, closed: closed}
		c.Store = broken
		c.PoolInterval = time.Hour // the pool below stays empty
	})
	p, err := broken.ProjectByName(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if err := broken.SetWarmPool(ctx, store.WarmPool{ProjectID: p.ID, GPUType: "t4", Size: 1}); err != nil {
		t.Fatal(err)
	}
	// Before the fault the developer sees the project.
	if code, body := f.call(f.dev, "GET", "/api/v1/projects", nil); code != http.StatusOK || !strings.Contains(string(body), `"default"`) {
		t.Fatalf("projects before the fault: %d %s", code, body)
	}
	broken.failing.Store(true)
	for _, tc := range []struct{ token, method, path string }{
		{f.dev, "GET", "/api/v1/projects"},
		{f.padmin, "GET", "/api/v1/pools"},
		{f.dev, "GET", "/api/v1/projects/default"},
	} {
		if code, body := f.call(tc.token, tc.method, tc.path, nil); code != http.StatusInternalServerError {
			t.Errorf("%s %s with a failing store: %d %s; want 500", tc.method, tc.path, code, body)
		}
	}
}
