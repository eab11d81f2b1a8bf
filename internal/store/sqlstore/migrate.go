package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// migration is one NNNN_name.sql file.
type migration struct {
	version int64
	name    string
	sql     string
	// expand: the file's first line is compatibleOlder, so releases that
	// know only earlier versions keep working on the migrated store. A
	// migration without it contracts the schema: only releases that know
	// the version right before it (which no longer use what it removes)
	// keep working.
	expand bool
}

// compatibleOlder, as the first line of a migration file, marks an expand
// migration.
const compatibleOlder = "-- compatible: older"

// migrations reads the dialect's migration files in version order. Adding
// one is dropping the next NNNN_name.sql beside the others.
func (d *Dialect) migrations() ([]migration, error) {
	files, err := fs.Glob(d.Migrations, "*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, f := range files {
		prefix, _, ok := strings.Cut(f, "_")
		v, err := strconv.ParseInt(prefix, 10, 64)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name is not NNNN_name.sql", f)
		}
		b, err := fs.ReadFile(d.Migrations, f)
		if err != nil {
			return nil, err
		}
		first, _, _ := strings.Cut(string(b), "\n")
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(path.Base(f), ".sql"), sql: string(b),
			expand: strings.TrimSpace(first) == compatibleOlder})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s have the same version", ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

// oldestReader is the oldest schema version a release may know and still
// use a store that ms brought up to date: the version before the newest
// contract migration (0 when every migration is an expand one).
func oldestReader(ms []migration) int64 {
	for i := len(ms) - 1; i >= 0; i-- {
		if !ms[i].expand {
			return ms[i].version - 1
		}
	}
	return 0
}

// Schema is where a store's schema stands against this release.
type Schema struct {
	Version      int64 // the store's newest migration
	Known        int64 // this release's newest migration
	OldestReader int64 // the oldest version a release may know to use the store
}

// Newer reports whether a newer release migrated the store past what this
// release knows (which it may still use: Known >= OldestReader).
func (sc Schema) Newer() bool { return sc.Version > sc.Known }

// SchemaTooNewError refuses a store that a newer release migrated past
// what this release can use.
type SchemaTooNewError struct{ Schema }

func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("the store's schema is at version %d and serves only releases that know version %d or later, "+
		"but this release knows only up to version %d: upgrade this replica to the release that ran migration %d, or a newer one",
		e.Version, e.OldestReader, e.Known, e.Version)
}

// Schema returns where the store's schema stood against this release when
// it was opened.
func (s *Store) Schema() Schema { return s.schema }

// goSteps are the parts of migrations written in Go, by the name of the
// migration without its number: each runs right after that migration's
// SQL, in its transaction, on both engines.
var goSteps = map[string]func(ctx context.Context, tx *Store) error{
	"budget_use": fillBudgetUse,
}

// migrationTopic is a migration's name without its number: "budget_use"
// for 0010_budget_use.
func migrationTopic(name string) string {
	_, topic, _ := strings.Cut(name, "_")
	return topic
}

// migrate applies the pending migrations in one transaction, which the
// dialect's TxLock serialises with other processes opening the database.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := s.d.migrations()
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx *Store) error {
		if _, err := tx.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    BIGINT PRIMARY KEY,
			name       TEXT NOT NULL,
			applied_at BIGINT NOT NULL
		)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		// The oldest schema version a release may know and still use the
		// store, written by the newest release that migrated it: an older
		// release cannot tell expand from contract in files it lacks.
		if _, err := tx.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_compat (
			id            INTEGER PRIMARY KEY CHECK (id = 1),
			oldest_reader BIGINT NOT NULL
		)`); err != nil {
			return fmt.Errorf("create schema_compat: %w", err)
		}
		var current int64
		if err := tx.queryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		var known int64
		if n := len(ms); n > 0 {
			known = ms[n-1].version
		}
		if current > known {
			sc := Schema{Version: current, Known: known}
			err := tx.queryRow(ctx, `SELECT oldest_reader FROM schema_compat WHERE id = 1`).Scan(&sc.OldestReader)
			if errors.Is(err, sql.ErrNoRows) {
				// Migrated by a release from before the record: it said
				// nothing of older ones.
				sc.OldestReader = current
			} else if err != nil {
				return fmt.Errorf("read the oldest schema version this store serves: %w", err)
			}
			if known < sc.OldestReader {
				return &SchemaTooNewError{sc}
			}
			// Nothing to apply, and the record is the newer release's.
			s.schema = sc
			slog.Warn("a newer release migrated the store; this release still works with it",
				"store", s.d.Name, "schema_version", sc.Version, "known_version", sc.Known, "oldest_reader", sc.OldestReader)
			return nil
		}
		for _, m := range ms {
			if m.version <= current {
				continue
			}
			// No arguments: both drivers then run every statement of the file.
			if _, err := tx.q.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("apply %s: %w", m.name, err)
			}
			if step := goSteps[migrationTopic(m.name)]; step != nil {
				if err := step(ctx, tx); err != nil {
					return fmt.Errorf("apply %s: %w", m.name, err)
				}
			}
			if _, err := tx.exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, time.Now().UnixMicro()); err != nil {
				return fmt.Errorf("record %s: %w", m.name, err)
			}
		}
		s.schema = Schema{Version: known, Known: known, OldestReader: oldestReader(ms)}
		if _, err := tx.exec(ctx, `INSERT INTO schema_compat (id, oldest_reader) VALUES (1, ?)
			ON CONFLICT (id) DO UPDATE SET oldest_reader = excluded.oldest_reader`, s.schema.OldestReader); err != nil {
			return fmt.Errorf("record the oldest schema version this store serves: %w", err)
		}
		return nil
	})
}
