package storetest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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

// SchemaCompat checks rolling upgrades: a store that newer releases
// migrated is used by an older release as long as every migration it lacks
// is an expand one (or a contract one right after what it knows), and is
// refused, naming both versions, once a newer release contracted the schema
// past it. The newer releases are today's migrations plus made-up ones,
// applied by the same code a newer release would run. Arguments are as for
// Upgrade.
func SchemaCompat(t *testing.T, driver, dsn string, dialect func(fs.FS) sqlstore.Dialect, migrations fs.FS) {
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	files, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	known := int64(len(files))
	release := func(extra map[string]string) fs.FS {
		fsys := fstest.MapFS{}
		for _, f := range files {
			b, err := fs.ReadFile(migrations, f)
			if err != nil {
				t.Fatal(err)
			}
			fsys[f] = &fstest.MapFile{Data: b}
		}
		for name, sql := range extra {
			fsys[name] = &fstest.MapFile{Data: []byte(sql)}
		}
		return fsys
	}
	open := func(migrations fs.FS) (*sqlstore.Store, error) {
		db := mustOpen(t, driver, dsn)
		s, err := sqlstore.New(ctx, db, dialect(migrations))
		if err != nil {
			db.Close()
			return nil, err
		}
		return s, nil
	}
	// use opens the store with a release's migrations, checks where its
	// schema stands and that it serves, and closes it.
	use := func(what string, migrations fs.FS, want sqlstore.Schema) {
		t.Helper()
		s, err := open(migrations)
		if err != nil {
			t.Fatalf("%s: open = %v, want it to work", what, err)
		}
		defer s.Close()
		if got := s.Schema(); got != want {
			t.Errorf("%s: Schema() = %+v, want %+v", what, got, want)
		}
		name := fmt.Sprintf("user-%d-%d", want.Version, want.Known)
		if err := s.CreateUser(ctx, &store.User{Name: name}); err != nil {
			t.Errorf("%s: the store does not serve: %v", what, err)
		}
	}

	// Today's release on a new store: the newest contract migration
	// before it sets how old a reader may be.
	ms := release(nil)
	var lastContract int64
	for i, f := range files {
		b, _ := fs.ReadFile(migrations, f)
		if first, _, _ := strings.Cut(string(b), "\n"); strings.TrimSpace(first) != "-- compatible: older" {
			lastContract = int64(i + 1)
		}
	}
	if lastContract == known {
		t.Fatalf("the newest migration, %s, is a contract one; this test wants it to be an expand one", files[len(files)-1])
	}
	use("this release", ms, sqlstore.Schema{Version: known, Known: known, OldestReader: lastContract - 1})

	// A newer release adds an expand migration: this release still serves.
	expand := fmt.Sprintf("%04d_next_expand.sql", known+1)
	newer := release(map[string]string{expand: "-- compatible: older\nCREATE TABLE next_expand (id BIGINT PRIMARY KEY, note TEXT);\n"})
	use("the newer release", newer, sqlstore.Schema{Version: known + 1, Known: known + 1, OldestReader: lastContract - 1})
	use("this release after an expand migration", ms, sqlstore.Schema{Version: known + 1, Known: known, OldestReader: lastContract - 1})

	// A release after it contracts the schema (a contract migration is
	// written for the release right before it): the release that knows the
	// expand migration still serves, this one is refused.
	contract := fmt.Sprintf("%04d_next_contract.sql", known+2)
	newest := release(map[string]string{expand: "-- compatible: older\nCREATE TABLE next_expand (id BIGINT PRIMARY KEY, note TEXT);\n",
		contract: "ALTER TABLE next_expand DROP COLUMN note;\n"})
	use("the newest release", newest, sqlstore.Schema{Version: known + 2, Known: known + 2, OldestReader: known + 1})
	use("the release before the contract migration", newer, sqlstore.Schema{Version: known + 2, Known: known + 1, OldestReader: known + 1})
	s, err := open(ms)
	var tooNew *sqlstore.SchemaTooNewError
	if !errors.As(err, &tooNew) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("this release after a contract migration past it: open = %v, want a SchemaTooNewError", err)
	}
	if want := (sqlstore.Schema{Version: known + 2, Known: known, OldestReader: known + 1}); tooNew.Schema != want {
		t.Errorf("refused with %+v, want %+v", tooNew.Schema, want)
	}
	for _, want := range []string{
		fmt.Sprintf("schema is at version %d", known+2),
		fmt.Sprintf("knows only up to version %d", known),
		fmt.Sprintf("upgrade this replica to the release that ran migration %d", known+2),
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not say %q", err, want)
		}
	}
}
