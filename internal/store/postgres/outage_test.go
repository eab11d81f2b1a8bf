package postgres_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/storetest"
	"github.com/devgpu/devgpu/internal/testutil"
)

// TestOutage cuts the network between the store and PostgreSQL: every kind
// of call fails fast with store.ErrUnavailable, and once the network is
// back the same store serves again, without being reopened.
func TestOutage(t *testing.T) {
	dbURL, err := url.Parse(storetest.PostgresDB(t, storetest.PostgresServer(t)))
	if err != nil {
		t.Fatal(err)
	}
	proxy := testutil.NewProxy(t, dbURL.Host)
	dbURL.Host = proxy.Addr
	s := open(t, dbURL.String())
	ctx := testutil.Context(t, testutil.WaitLong)
	if err := s.CreateUser(ctx, &store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}

	calls := []struct {
		name string
		call func(ctx context.Context, i int) error
	}{
		{"read", func(ctx context.Context, _ int) error { _, err := s.UserByName(ctx, "alice"); return err }},
		{"write", func(ctx context.Context, i int) error {
			return s.CreateUser(ctx, &store.User{Name: "bob" + strings.Repeat("+", i)})
		}},
		{"transaction", func(ctx context.Context, _ int) error {
			return s.InTx(ctx, func(tx store.Store) error { _, err := tx.ListSessions(ctx, store.SessionFilter{}); return err })
		}},
		{"lease", func(ctx context.Context, _ int) error {
			_, err := s.AcquireLease(ctx, "leader", "r1", time.Minute)
			return err
		}},
	}
	proxy.Cut()
	for _, c := range calls {
		callCtx, cancel := context.WithTimeout(ctx, testutil.WaitMedium)
		start := time.Now()
		err := c.call(callCtx, 0)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s while the database is cut off = %v; want ErrUnavailable", c.name, err)
		}
		t.Logf("%s while cut off: failed after %v", c.name, took)
		if took > testutil.WaitShort {
			t.Errorf("%s while the database is cut off took %v; want it to fail within %v", c.name, took, testutil.WaitShort)
		}
	}

	proxy.Restore()
	testutil.Eventually(t, testutil.WaitMedium, "the store to serve again", func() bool {
		_, err := s.UserByName(ctx, "alice")
		return err == nil
	})
	for i, c := range calls {
		if err := c.call(ctx, i+1); err != nil {
			t.Errorf("%s after the database came back = %v", c.name, err)
		}
	}
}

// TestPoolBounded: however many requests wait, the store holds at most
// pool_max_conns connections to the database.
func TestPoolBounded(t *testing.T) {
	srv := storetest.PostgresServer(t)
	dbURL, err := url.Parse(storetest.PostgresDB(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(dbURL.Path, "/")
	q := dbURL.Query()
	q.Set("pool_max_conns", "3")
	dbURL.RawQuery = q.Encode()
	s := open(t, dbURL.String())
	ctx := testutil.Context(t, testutil.WaitLong)
	connections := func() int {
		var n int
		if err := srv.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Ten transactions at once: the first holds InTx's lock until
	// release, the others wait for it on a connection each, or for one.
	release := make(chan struct{})
	var wg sync.WaitGroup
	defer func() {
		close(release)
		wg.Wait()
	}()
	for range 10 {
		wg.Go(func() {
			if err := s.InTx(ctx, func(tx store.Store) error { <-release; return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	testutil.Eventually(t, testutil.WaitMedium, "the pool to be full", func() bool { return connections() >= 3 })
	for range 25 {
		if n := connections(); n > 3 {
			t.Fatalf("%d connections to the database; want at most pool_max_conns=3", n)
		}
		time.Sleep(testutil.Poll) // timing: samples an invariant over a while, not a synchronisation
	}
}
