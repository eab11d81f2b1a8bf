package storetest

import (
	"context"
	"database/sql"
	"io/fs"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
	"github.com/devgpu/devgpu/sdk"
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

// UpgradePlacement checks the migration that left device choice to the
// engines: a database an older release wrote, with sessions holding
// devices of the inventory (running, stopping, one reserved device retired),
// an ended one with its kept copy, a queued request and a request that gave
// up, migrates so that every session keeps its devices, in the order the
// store gave them before (by id), and holds the GPU count it had (a queued
// one holds none until it is placed); the inventory is gone and no
// capacity is invented.
// Arguments are as for Upgrade.
func UpgradePlacement(t *testing.T, driver, dsn string, dialect func(fs.FS) sqlstore.Dialect, migrations fs.FS) {
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	before := migrationsBefore(t, migrations, "_placement.sql")
	old, err := sqlstore.New(ctx, mustOpen(t, driver, dsn), dialect(before))
	if err != nil {
		t.Fatal(err)
	}
	raw := mustOpen(t, driver, dsn)
	defer raw.Close()
	session := func(id, state string) string {
		return `INSERT INTO sessions (id, project_id, user_id, state, gpu_type, region, attachments, detach_grace,
			created_at, end_reason, error) VALUES ('` + id + `', (SELECT id FROM projects WHERE name = 'ml'),
			(SELECT id FROM users WHERE name = 'alice'), '` + state + `', 't4', 'local', 0, 0, 1, '', '')`
	}
	// The old schema's terms, as an older release wrote them.
	for _, q := range []string{
		`INSERT INTO users (name, org_admin, disabled, created_at) VALUES ('alice', false, false, 1)`,
		`INSERT INTO projects (name, settings, created_at, updated_at) VALUES ('ml', '{}', 1, 1)`,
		session("run", sdk.StateRunning),
		session("stop", sdk.StateStopping),
		session("done", sdk.StateEnded),
		session("wait", sdk.StateQueued),
		session("gave", sdk.StateFailed),
		// Reserved in the inventory, written out of id order.
		`INSERT INTO gpus (id, type, region, session_id, retired) VALUES ('GPU-sim-t4-1', 't4', 'local', 'run', false)`,
		`INSERT INTO gpus (id, type, region, session_id, retired) VALUES ('GPU-sim-t4-0', 't4', 'local', 'run', false)`,
		`INSERT INTO gpus (id, type, region, session_id, retired) VALUES ('GPU-sim-t4-5', 't4', 'local', 'stop', true)`,
		`INSERT INTO gpus (id, type, region, session_id, retired) VALUES ('GPU-sim-t4-4', 't4', 'local', NULL, false)`,
		// The copy an ended session kept.
		`INSERT INTO session_gpus (session_id, gpu_id) VALUES ('done', 'GPU-sim-t4-3')`,
		`INSERT INTO session_gpus (session_id, gpu_id) VALUES ('done', 'GPU-sim-t4-2')`,
	} {
		if _, err := raw.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	old.Close()

	s, err := sqlstore.New(ctx, mustOpen(t, driver, dsn), dialect(migrations))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, want := range []struct {
		id    string
		count int
		gpus  []string
	}{
		{"run", 2, []string{"GPU-sim-t4-0", "GPU-sim-t4-1"}},
		{"stop", 1, []string{"GPU-sim-t4-5"}},
		{"done", 2, []string{"GPU-sim-t4-2", "GPU-sim-t4-3"}},
		{"wait", 0, nil},
		{"gave", 0, nil},
	} {
		got, err := s.Session(ctx, want.id)
		if err != nil || got.GPUCount != want.count || !reflect.DeepEqual(got.GPUs, want.gpus) || got.Backend != "" {
			t.Errorf("session %s after the upgrade = %+v, %v; want GPUCount %d, GPUs %v, the first backend",
				want.id, got, err, want.count, want.gpus)
		}
	}
	active, err := s.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil || len(active) != 3 {
		t.Errorf("active sessions after the upgrade = %+v, %v; want run, stop, wait", active, err)
	}
	if list, err := s.ListCapacity(ctx); err != nil || len(list) != 0 {
		t.Errorf("capacity after the upgrade = %+v, %v; want none until the runtimes report", list, err)
	}
	if _, err := raw.ExecContext(ctx, `SELECT COUNT(*) FROM gpus`); err == nil {
		t.Errorf("the inventory table gpus is still there after the upgrade")
	}
	// The migrated devices behave as any: the end keeps them, in order.
	if err := s.EndSession(ctx, "run", sdk.StateEnded, sdk.ReasonClosed, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Session(ctx, "run"); err != nil || !reflect.DeepEqual(got.GPUs, []string{"GPU-sim-t4-0", "GPU-sim-t4-1"}) {
		t.Errorf("migrated session after its end = %+v, %v; want its devices kept", got, err)
	}
}

// migrationsBefore returns the migrations that come before the one whose
// file name ends with suffix, failing the test when there is none.
func migrationsBefore(t *testing.T, migrations fs.FS, suffix string) fs.FS {
	t.Helper()
	files, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	before := fstest.MapFS{}
	for _, f := range files {
		if strings.HasSuffix(f, suffix) {
			return before
		}
		b, err := fs.ReadFile(migrations, f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = &fstest.MapFile{Data: b}
	}
	t.Fatalf("no NNNN%s migration", suffix)
	return nil
}

func mustOpen(t *testing.T, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	return db
}
