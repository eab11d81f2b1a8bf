package storetest

import (
	"context"
	"database/sql"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
)

// Upgrade checks that a database of the first, released schema migrates to
// the current one with its data, and that the usage ledger then refuses
// changes and deletions even from SQL outside the store. The database is
// the one driver opens at dsn (empty); dialect builds the engine's dialect
// for a set of migration files; migrations are the engine's own. It
// returns that database opened directly, for engine-specific checks.
func Upgrade(t *testing.T, driver, dsn string, dialect func(fs.FS) sqlstore.Dialect, migrations fs.FS) *sql.DB {
	openWith := func(t *testing.T, migrations fs.FS) store.Store {
		db, err := sql.Open(driver, dsn)
		if err != nil {
			t.Fatal(err)
		}
		s, err := sqlstore.New(t.Context(), db, dialect(migrations))
		if err != nil {
			db.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	raw, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	first, err := fs.ReadFile(migrations, "0001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	// The old data is written in the first schema's own terms, as the
	// first release wrote it: today's store code speaks the newest schema.
	openWith(t, fstest.MapFS{"0001_init.sql": {Data: first}})
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, q := range []string{
		`INSERT INTO users (name, org_admin, disabled, created_at) VALUES ('alice', false, false, 1)`,
		`INSERT INTO projects (name, settings, created_at, updated_at) VALUES ('ml', '{}', 1, 1)`,
		`INSERT INTO sessions (id, project_id, user_id, state, gpu_type, region, attachments, agent_secret, detach_grace,
			created_at, started_at, ended_at, end_reason, error) VALUES ('s1', (SELECT id FROM projects WHERE name = 'ml'),
			(SELECT id FROM users WHERE name = 'alice'), 'ended', 't4', 'local', 0, 'x', 0, 1, 1, 2, 'closed', '')`,
		`INSERT INTO session_gpus (session_id, gpu_id) VALUES ('s1', 'GPU-sim-t4-0')`,
	} {
		if _, err := raw.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	s := openWith(t, migrations)
	u, err := s.UserByName(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.ProjectByName(ctx, "ml")
	if err != nil {
		t.Fatal(err)
	}
	sess := store.Session{ID: "s1", GPUs: []string{"GPU-sim-t4-0"}}
	if got, err := s.Session(ctx, sess.ID); err != nil || got.User != "alice" || got.Project != "ml" {
		t.Fatalf("Session after the upgrade = %+v, %v", got, err)
	}
	e := mustAppend(t, ctx, s, usage(sess.ID, sess.GPUs[0], p, u, at))
	listUsage(t, ctx, s, store.UsageFilter{}, e)

	files, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var version int
	if err := raw.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&version); err != nil || version != len(files) {
		t.Errorf("schema version %d, %v; want %d", version, err, len(files))
	}
	for _, q := range []string{
		`UPDATE usage_ledger SET cost_micros = 0`,
		`UPDATE usage_ledger SET end_at = end_at + 1000000`,
		`DELETE FROM usage_ledger`,
	} {
		if _, err := raw.ExecContext(ctx, q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v, want the ledger to refuse: append-only", q, err)
		}
	}
	listUsage(t, ctx, s, store.UsageFilter{}, e)
	return raw
}
