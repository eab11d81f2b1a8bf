package postgres_test

import (
	"sync"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/storetest"
)

func open(t *testing.T, dbURL string) store.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dbURL)
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
	srv := storetest.PostgresServer(t)
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, storetest.PostgresDB(t, srv)) })
}

// TestOpenConcurrently checks that servers starting at once on one new
// database migrate it once, and that opening it again changes nothing.
func TestOpenConcurrently(t *testing.T) {
	dbURL := storetest.PostgresDB(t, storetest.PostgresServer(t))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), dbURL)
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	s := open(t, dbURL)
	if err := s.CreateUser(t.Context(), &store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, dbURL).UserByName(t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
}
