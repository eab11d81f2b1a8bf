package testutil

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// The private PostgreSQL answers queries, keeps its data across a fast
// restart, refuses connections while stopped and answers again once
// started.
func TestPGServerRestart(t *testing.T) {
	t.Parallel()
	p := StartPostgres(t)
	ctx := Context(t, WaitLong)
	query := func(sql string) error {
		c, err := pgx.Connect(ctx, p.URL(p.Addr(), "postgres"))
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		_, err = c.Exec(ctx, sql)
		return err
	}
	if err := query("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	p.Restart(t)
	if err := query("SELECT n FROM kept"); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	p.Stop(t)
	if err := query("SELECT 1"); err == nil {
		t.Fatal("a stopped PostgreSQL answered")
	}
	p.Start(t)
	if err := query("SELECT n FROM kept"); err != nil {
		t.Fatalf("after stop and start: %v", err)
	}
}
