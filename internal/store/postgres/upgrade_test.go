package postgres

import (
	"database/sql"
	"io/fs"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
	"github.com/devgpu/devgpu/internal/store/storetest"
)

func TestUpgrade(t *testing.T) {
	url := storetest.PostgresDB(t, storetest.PostgresServer(t))
	openWith := func(t *testing.T, migrations fs.FS) store.Store {
		db, err := sql.Open("pgx", url)
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
	raw, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	storetest.Upgrade(t, openWith, migrationFiles(), raw)
	if _, err := raw.ExecContext(t.Context(), `TRUNCATE usage_ledger`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("TRUNCATE usage_ledger: %v, want the ledger to refuse: append-only", err)
	}
}
