package sqlite

import (
	"database/sql"
	"path/filepath"
	"testing"
)

// TestDSN checks that every connection gets the settings Open asks for.
func TestDSN(t *testing.T) {
	db, err := sql.Open("sqlite", dsn(filepath.Join(t.TempDir(), "a b?c#d.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"synchronous":  "1", // NORMAL
		"foreign_keys": "1",
		"busy_timeout": "10000",
	} {
		var got string
		if err := db.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil || got != want {
			t.Errorf("PRAGMA %s = %q, %v; want %q", pragma, got, err, want)
		}
	}
	var file string
	if err := db.QueryRow("SELECT file FROM pragma_database_list WHERE name = 'main'").Scan(&file); err != nil || filepath.Base(file) != "a b?c#d.db" {
		t.Errorf("database file %q, %v; want a b?c#d.db", file, err)
	}
}
