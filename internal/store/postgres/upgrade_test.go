package postgres

import (
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/store/storetest"
)

func TestUpgrade(t *testing.T) {
	raw := storetest.Upgrade(t, "pgx", storetest.PostgresDB(t, storetest.PostgresServer(t)), dialect, migrationFiles())
	if _, err := raw.ExecContext(t.Context(), `TRUNCATE usage_ledger`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("TRUNCATE usage_ledger: %v, want the ledger to refuse: append-only", err)
	}
}

func TestUpgradeBudgetUse(t *testing.T) {
	storetest.UpgradeBudgetUse(t, "pgx", storetest.PostgresDB(t, storetest.PostgresServer(t)), dialect, migrationFiles())
}

func TestUpgradePlacement(t *testing.T) {
	storetest.UpgradePlacement(t, "pgx", storetest.PostgresDB(t, storetest.PostgresServer(t)), dialect, migrationFiles())
}

func TestSchemaCompat(t *testing.T) {
	storetest.SchemaCompat(t, "pgx", storetest.PostgresDB(t, storetest.PostgresServer(t)), dialect, migrationFiles())
}
