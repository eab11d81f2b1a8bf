package postgres_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/storetest"
)

// serverURL is the PostgreSQL server the tests create their databases on.
func serverURL() string {
	if u := os.Getenv("DEVGPU_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// server connects to the test server. Without one it skips the test,
// except in CI, where a skipped test would hide that nothing was tested.
func server(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", serverURL())
	if err == nil {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		err = db.PingContext(ctx)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("PostgreSQL at DEVGPU_TEST_POSTGRES_URL: %v", err)
		}
		t.Skipf("no PostgreSQL (set DEVGPU_TEST_POSTGRES_URL): %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// createDB creates an empty database, dropped when t ends, and returns its URL.
func createDB(t *testing.T, srv *sql.DB) string {
	t.Helper()
	name := "devgpu_test_" + strings.ToLower(rand.Text())
	if _, err := srv.ExecContext(t.Context(), "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// WITH (FORCE) ends connections a failed test left open.
		if _, err := srv.ExecContext(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	u, err := url.Parse(serverURL())
	if err != nil {
		t.Fatalf("DEVGPU_TEST_POSTGRES_URL must be a postgres:// URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

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
	srv := server(t)
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, createDB(t, srv)) })
}

// TestOpenConcurrently checks that servers starting at once on one new
// database migrate it once, and that opening it again changes nothing.
func TestOpenConcurrently(t *testing.T) {
	dbURL := createDB(t, server(t))
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
