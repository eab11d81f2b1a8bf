package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// PostgresServerURL is the PostgreSQL server tests create databases on:
// $DEVGPU_TEST_POSTGRES_URL, or the local one with trust auth.
func PostgresServerURL() string {
	if u := os.Getenv("DEVGPU_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// PostgresServer connects to the test server. Without one it skips the
// test, except in CI, where a skipped test would hide that nothing ran.
func PostgresServer(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", PostgresServerURL())
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

// PostgresDB creates an empty database on srv, dropped when t ends, and
// returns its URL.
func PostgresDB(t *testing.T, srv *sql.DB) string {
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
	u, err := url.Parse(PostgresServerURL())
	if err != nil {
		t.Fatalf("DEVGPU_TEST_POSTGRES_URL must be a postgres:// URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
