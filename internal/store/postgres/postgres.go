// Package postgres opens the store on a PostgreSQL database through pgx.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

func migrationFiles() fs.FS {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		panic(err) // a valid constant path cannot fail
	}
	return sub
}

// txLock serialises every InTx transaction (store.Store's contract) with
// one transaction-scoped advisory lock, released at commit or rollback.
// The key is "devgpu" in ASCII; any constant would do.
const txLock = `SELECT pg_advisory_xact_lock(110386435453045)`

// maxConns bounds the connection pool of one control plane.
const maxConns = 16

// Open connects to the database at url, a postgres:// URL or a key=value
// connection string, and brings its schema up to date.
func Open(ctx context.Context, url string) (*sqlstore.Store, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	// Every transaction takes one advisory lock, so more connections than
	// this only wait on the server, using up its max_connections.
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	s, err := sqlstore.New(ctx, db, dialect(migrationFiles()))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	return s, nil
}

func dialect(migrations fs.FS) sqlstore.Dialect {
	return sqlstore.Dialect{
		Name:                    "postgres",
		NumberedParams:          true,
		TxLock:                  txLock,
		FailedStatementAbortsTx: true,
		Classify:                classify,
		Migrations:              migrations,
		// clock_timestamp(), not now(): now() stands still for a whole
		// transaction, and a fence checked late in a long one must see
		// that its lease ran out meanwhile.
		Now:         `CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)`,
		ForUpdate:   ` FOR UPDATE`,
		ForKeyShare: ` FOR KEY SHARE`,
	}
}

func classify(err error) error {
	var e *pgconn.PgError
	if !errors.As(err, &e) {
		return nil
	}
	switch e.Code {
	case "23505": // unique_violation
		return store.ErrConflict
	case "23503": // foreign_key_violation: see the sqlite engine
		return store.ErrNotFound
	}
	return nil
}
