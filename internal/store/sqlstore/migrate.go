package sqlstore

import (
	"context"
	"fmt"
	"io/fs"
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
}

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
		ms = append(ms, migration{version: v, name: strings.TrimSuffix(path.Base(f), ".sql"), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s have the same version", ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

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
		var current int64
		if err := tx.queryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		if n := len(ms); n > 0 && current > ms[n-1].version {
			return fmt.Errorf("schema version %d is newer than this program's %d", current, ms[n-1].version)
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
		return nil
	})
}
