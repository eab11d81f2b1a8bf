// Package sqlite opens the store on an embedded SQLite database file, the
// default engine, through modernc.org/sqlite (pure Go, no cgo).
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

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

// Open opens (creating it if needed) the database file at path and brings
// its schema up to date. The file, and the -wal and -shm files SQLite
// makes beside it with the same mode, are readable by their owner only.
//
// One store serves one server: Open holds an exclusive lock on
// <path>.lock until Close, and fails with ErrInUse while another Open, in
// this process or another, holds it.
func Open(ctx context.Context, path string) (*sqlstore.Store, error) {
	lock, err := lockFile(path)
	if err != nil {
		return nil, err
	}
	if err := private(path); err != nil {
		lock.release()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	s, err := sqlstore.New(ctx, db, dialect(migrationFiles()))
	if err != nil {
		db.Close()
		lock.release()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	s.AfterClose(lock.release)
	return s, nil
}

// private creates the database file with mode 0600 when it does not exist,
// before SQLite does (with 0644 less the umask), and takes group and other
// access away from an existing one and its companions. SQLite gives the
// -wal, -shm and -journal files it creates the database file's mode.
func private(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		return f.Close()
	}
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, fi.Mode().Perm()&0o700); err != nil {
				return err
			}
		}
	}
	return nil
}

func dialect(migrations fs.FS) sqlstore.Dialect {
	return sqlstore.Dialect{
		Name:       "sqlite",
		Serialize:  true,
		Classify:   classify,
		Migrations: migrations,
		// The process clock, which SQLite reads to the millisecond: one
		// machine, one clock.
		Now: `CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER) * 1000`,
	}
}

// dsn is the modernc.org/sqlite data source name for the file at path.
func dsn(path string) string {
	q := url.Values{}
	// Every write transaction takes the write lock when it begins: a
	// deferred one that reads and then writes fails with SQLITE_BUSY, at
	// once and without waiting, when another has written meanwhile.
	q.Set("_txlock", "immediate")
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "NORMAL") // in WAL mode: a power loss may undo the last commits, never corrupt
	q.Set("_busy_timeout", "10000") // ms; waits for writers in other processes
	q.Set("_foreign_keys", "1")
	// A file: URI, so that a path holding '?' or '#' stays a path.
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

func classify(err error) error {
	var e *sqlite.Error
	if !errors.As(err, &e) {
		return nil
	}
	switch e.Code() {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return store.ErrConflict
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		// Nothing restricts a delete, so this is an insert or update
		// naming a row that does not exist.
		return store.ErrNotFound
	}
	return nil
}
