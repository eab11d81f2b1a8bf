package sqlite

import (
	"database/sql"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
	"github.com/devgpu/devgpu/internal/store/storetest"
)

func TestUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devgpu.db")
	openWith := func(t *testing.T, migrations fs.FS) store.Store {
		db, err := sql.Open("sqlite", dsn(path))
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
	raw, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	storetest.Upgrade(t, openWith, migrationFiles(), raw)
}
