package sqlite

import (
	"path/filepath"
	"testing"

	"github.com/devgpu/devgpu/internal/store/storetest"
)

func TestUpgrade(t *testing.T) {
	storetest.Upgrade(t, "sqlite", dsn(filepath.Join(t.TempDir(), "devgpu.db")), dialect, migrationFiles())
}

func TestUpgradeBudgetUse(t *testing.T) {
	storetest.UpgradeBudgetUse(t, "sqlite", dsn(filepath.Join(t.TempDir(), "devgpu.db")), dialect, migrationFiles())
}

func TestUpgradePlacement(t *testing.T) {
	storetest.UpgradePlacement(t, "sqlite", dsn(filepath.Join(t.TempDir(), "devgpu.db")), dialect, migrationFiles())
}

func TestSchemaCompat(t *testing.T) {
	storetest.SchemaCompat(t, "sqlite", dsn(filepath.Join(t.TempDir(), "devgpu.db")), dialect, migrationFiles())
}
