package sqlite_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/store/storetest"
)

func open(t *testing.T, path string) store.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, filepath.Join(t.TempDir(), "devgpu.db"))
	})
}

// TestOpen checks that servers starting at once on one new database file
// are let in one at a time (the others refused, none waiting), that the
// first migrates it, and that opening it again keeps its data.
func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir with ?#% chars", "devgpu.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var opened atomic.Int32
	for range 4 {
		wg.Go(func() {
			s, err := sqlite.Open(t.Context(), path)
			if errors.Is(err, sqlite.ErrInUse) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			opened.Add(1)
			if err := s.CreateUser(t.Context(), &store.User{Name: "alice"}); err != nil && !errors.Is(err, store.ErrConflict) {
				t.Error(err)
			}
			s.Close()
		})
	}
	wg.Wait()
	if opened.Load() == 0 {
		t.Fatal("no Open succeeded")
	}
	if _, err := open(t, path).UserByName(t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database is not at %s: %v", path, err)
	}
}
