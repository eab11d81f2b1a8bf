// Package postgres opens the store on a PostgreSQL database through pgx.
package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

func migrationFiles() fs.FS {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		panic(err) // a valid constant path cannot fail
	}
	return sub
}

// txLock serialises every InTx transaction (store.Store's contract) with
// one transaction-scoped advisory lock, released at commit or rollback.
// The key is "devgpu" in ASCII; any constant would do.
const txLock = `SELECT pg_advisory_xact_lock(110386435453045)`

// Pool defaults, each overridden by the URL's own parameter (pgxpool's
// pool_max_conns, pool_min_conns, pool_max_conn_lifetime,
// pool_max_conn_lifetime_jitter, pool_max_conn_idle_time,
// pool_health_check_period; libpq's connect_timeout).
const (
	// Every InTx takes one advisory lock, so more connections than this
	// only wait on the server, using up its max_connections.
	defaultMaxConns = 16
	// Connections are replaced now and then, so that a failover, a
	// restarted server or a rebalanced pooler gets used; the jitter keeps
	// replicas that started together from reconnecting together.
	defaultMaxConnLifetime       = 30 * time.Minute
	defaultMaxConnLifetimeJitter = 5 * time.Minute
	defaultMaxConnIdleTime       = 5 * time.Minute
	// Dead idle connections are found and dropped within this.
	defaultHealthCheckPeriod = 15 * time.Second
	// An unreachable database fails a request in seconds, not minutes.
	defaultConnectTimeout = 3 * time.Second
)

// poolConfig is the connection pool for url: the defaults above, unless
// the URL sets its own.
func poolConfig(url string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	// pgxpool reads and removes its parameters; a second parse tells
	// which ones the URL set.
	given, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	set := func(param string) bool {
		_, ok := given.RuntimeParams[param]
		return ok
	}
	if !set("pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if !set("pool_min_conns") {
		cfg.MinConns = 0
	}
	if !set("pool_max_conn_lifetime") {
		cfg.MaxConnLifetime = defaultMaxConnLifetime
	}
	if !set("pool_max_conn_lifetime_jitter") {
		cfg.MaxConnLifetimeJitter = defaultMaxConnLifetimeJitter
	}
	if !set("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = defaultMaxConnIdleTime
	}
	if !set("pool_health_check_period") {
		cfg.HealthCheckPeriod = defaultHealthCheckPeriod
	}
	if cfg.ConnConfig.ConnectTimeout == 0 { // neither connect_timeout nor $PGCONNECT_TIMEOUT
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	return cfg, nil
}

// Open connects to the database at url, a postgres:// URL or a key=value
// connection string, and brings its schema up to date. Errors that mean
// the database cannot be reached, there and in every call after, are
// store.ErrUnavailable.
func Open(ctx context.Context, url string) (*sqlstore.Store, error) {
	cfg, err := poolConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	// database/sql keeps no idle connections of its own (the pool does),
	// and calls the connector for each, so that every wait for a
	// connection is the pool's, bounded by its MaxConns.
	db := sql.OpenDB(connector{stdlib.GetPoolConnector(pool), pool})
	db.SetMaxIdleConns(0)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", unavailable(err))
	}
	s, err := sqlstore.New(ctx, db, dialect(migrationFiles()))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres: %w", unavailable(err))
	}
	return s, nil
}

// connector hands out the pool's connections to database/sql, and says
// store.ErrUnavailable when none comes: the database refused or timed
// out, or every connection stayed busy until the caller's deadline.
type connector struct {
	driver.Connector
	pool *pgxpool.Pool
}

func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return conn, nil
}

// Close closes the pool when database/sql closes the *sql.DB.
func (c connector) Close() error {
	c.pool.Close()
	return nil
}

// unavailable marks err with store.ErrUnavailable when it means the
// database cannot be reached.
func unavailable(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) || !isUnavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// isUnavailable reports whether err is the connection's, not the query's:
// nothing reached the server, the connection failed or was cut, or the
// server is shutting down or refuses connections.
func isUnavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection_exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // admin or crash shutdown, cannot connect now
			return true
		case pgErr.Code == "53300": // too_many_connections
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	// The caller's deadline or cancellation is its own, even though
	// context.DeadlineExceeded is a net.Error; waiting for a connection
	// until then is the connector's to mark.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var netErr net.Error
	switch {
	case pgconn.SafeToRetry(err), errors.As(err, &netErr):
		return true
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE):
		return true
	}
	// pgx closes a connection whose socket failed; later uses say so.
	return strings.Contains(err.Error(), "conn closed")
}

func dialect(migrations fs.FS) sqlstore.Dialect {
	return sqlstore.Dialect{
		Name:                    "postgres",
		NumberedParams:          true,
		TxLock:                  txLock,
		FailedStatementAbortsTx: true,
		Classify:                classify,
		Migrations:              migrations,
		// clock_timestamp(), not now(): now() stands still for a whole
		// transaction, and a fence checked late in a long one must see
		// that its lease ran out meanwhile.
		Now:         `CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)`,
		ForUpdate:   ` FOR UPDATE`,
		ForKeyShare: ` FOR KEY SHARE`,
	}
}

func classify(err error) error {
	if isUnavailable(err) {
		return store.ErrUnavailable
	}
	var e *pgconn.PgError
	if !errors.As(err, &e) {
		return nil
	}
	switch e.Code {
	case "23505": // unique_violation
		return store.ErrConflict
	case "23503": // foreign_key_violation: see the sqlite engine
		return store.ErrNotFound
	}
	return nil
}
