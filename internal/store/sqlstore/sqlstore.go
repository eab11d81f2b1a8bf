// Package sqlstore is the one SQL implementation of store.Store, shared by
// the SQLite and PostgreSQL engines. An engine opens a *sql.DB and describes
// what differs in a Dialect; everything else, queries included, lives here.
//
// Queries are written with ? placeholders, and columns hold what both
// engines read back the same way: times are unix microseconds in UTC (NULL
// for the zero time), durations nanoseconds, booleans SQLite's 0 and 1
// or PostgreSQL's BOOLEAN, both scanned into bool, and settings and
// policies JSON text written by encoding/json.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// Dialect is what differs between engines.
type Dialect struct {
	// Name names the engine in errors: "sqlite", "postgres".
	Name string
	// NumberedParams rewrites each ? placeholder as $1, $2, ... Queries
	// hold no ? inside literals, so the rewrite needs no SQL parser.
	NumberedParams bool
	// TxLock, when set, runs first in every InTx transaction (and in the
	// migration transaction) and blocks until no other one holds it.
	TxLock string
	// FailedStatementAbortsTx says that after a statement fails, the
	// transaction accepts nothing but a rollback, as in PostgreSQL.
	FailedStatementAbortsTx bool
	// Serialize queues writers (transactions and single writes) in this
	// process. SQLite takes one writer at a time, and its busy handler polls
	// for the lock with sleeps of up to 100ms; waiting in Go is faster.
	Serialize bool
	// Classify returns store.ErrConflict or store.ErrNotFound when err is
	// a driver error that means one, and nil otherwise.
	Classify func(err error) error
	// Migrations holds the engine's NNNN_name.sql files.
	Migrations fs.FS
	// Now is an SQL expression of the store's clock in unix microseconds,
	// read afresh by each statement (also inside a long transaction):
	// leases and heartbeats are timed by it, so that replicas whose clocks
	// differ agree on what has expired.
	Now string
	// ForUpdate, appended to a SELECT, locks the rows it reads until the
	// transaction ends; empty where the engine has one writer at a time.
	ForUpdate string
	// ForKeyShare, appended to a SELECT, keeps the rows it reads from
	// being deleted until the transaction ends, but not from being
	// updated; empty where the engine has one writer at a time.
	ForKeyShare string
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Store implements store.Store over a *sql.DB, or over one of its
// transactions inside InTx.
type Store struct {
	db   *sql.DB
	d    *Dialect
	q    querier // db, or the transaction inside InTx
	inTx bool
	sem  chan struct{} // held by the running writer when d.Serialize
	// schema is where the schema stood when New migrated it.
	schema Schema
	// afterClose runs once Close has closed the database: the engine lets
	// go of what it holds beside it.
	afterClose func() error
}

var _ store.Store = (*Store)(nil)

// New applies the dialect's pending migrations to db and returns a Store
// that owns db: Close closes it.
func New(ctx context.Context, db *sql.DB, d Dialect) (*Store, error) {
	s := &Store{db: db, d: &d, q: db}
	if d.Serialize {
		s.sem = make(chan struct{}, 1)
	}
	if err := s.migrate(ctx); err != nil {
		return nil, fmt.Errorf("migrate %s store: %w", d.Name, err)
	}
	return s, nil
}

// Close closes the database, then runs what AfterClose registered.
func (s *Store) Close() error {
	if s.inTx {
		return errors.New("close store: inside InTx")
	}
	err := s.db.Close()
	if s.afterClose != nil {
		err = errors.Join(err, s.afterClose())
		s.afterClose = nil
	}
	return err
}

// AfterClose makes Close run fn once the database is closed: an engine's
// hold on its files, say, ends after the last statement.
func (s *Store) AfterClose(fn func() error) { s.afterClose = fn }

// InTx runs fn in one transaction; see store.Store. The transaction holds
// the engine's write lock until it ends, so fn must use the Store it is
// given: a write through the outer Store may wait for fn forever.
func (s *Store) InTx(ctx context.Context, fn func(store.Store) error) error {
	err := s.tx(ctx, func(tx *Store) error { return fn(tx) })
	if err != nil && !errors.Is(err, store.ErrUnavailable) && s.d.Classify(err) == store.ErrUnavailable {
		// Begin, lock and commit fail here, and fn may return a driver's
		// error as it is: an outage reads the same from every method.
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// tx runs fn in the current transaction, or in a new one. Methods that
// write more than one statement use it so that they are atomic on their own.
func (s *Store) tx(ctx context.Context, fn func(*Store) error) error {
	if s.inTx {
		return fn(s)
	}
	return s.begin(ctx, true, fn)
}

// atomic runs fn, statements that write, as one. Inside a transaction it
// is write: a failure undoes fn alone. Outside, fn runs in a transaction
// of its own that does not take the dialect's TxLock: a method that only
// records (a session's devices beside its row) need not wait for
// admissions, nor they for it.
func (s *Store) atomic(ctx context.Context, fn func(*Store) error) error {
	if s.inTx {
		return s.write(ctx, func() error { return fn(s) })
	}
	return s.begin(ctx, false, fn)
}

// begin runs fn in a new transaction, which takes the dialect's TxLock
// when lock is set.
func (s *Store) begin(ctx context.Context, lock bool, fn func(*Store) error) error {
	release, err := s.queue(ctx)
	if err != nil {
		return err
	}
	defer release()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer tx.Rollback() // after Commit, a harmless ErrTxDone
	if lock && s.d.TxLock != "" {
		if _, err := tx.ExecContext(ctx, s.d.TxLock); err != nil {
			return fmt.Errorf("lock transaction: %w", err)
		}
	}
	if err := fn(&Store{db: s.db, d: s.d, q: tx, inTx: true, sem: s.sem}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return s.q.ExecContext(ctx, s.rebind(query), args...)
}

func (s *Store) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return s.q.QueryContext(ctx, s.rebind(query), args...)
}

func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return s.q.QueryRowContext(ctx, s.rebind(query), args...)
}

// write runs fn, one statement that writes. Outside a transaction it
// queues with the transactions, as they do, where the dialect serialises
// them. Inside one, it makes a failure of fn leave the transaction usable
// on every engine, so that fn may go on after, say, ErrConflict: where a
// failed statement aborts the transaction, a savepoint undoes just fn.
func (s *Store) write(ctx context.Context, fn func() error) error {
	if !s.inTx {
		release, err := s.queue(ctx)
		if err != nil {
			return err
		}
		defer release()
		return fn()
	}
	if !s.d.FailedStatementAbortsTx {
		return fn()
	}
	if _, err := s.q.ExecContext(ctx, `SAVEPOINT write`); err != nil {
		return err
	}
	if err := fn(); err != nil {
		if _, err2 := s.q.ExecContext(ctx, `ROLLBACK TO SAVEPOINT write`); err2 != nil {
			return errors.Join(err, err2)
		}
		return err
	}
	_, err := s.q.ExecContext(ctx, `RELEASE SAVEPOINT write`)
	return err
}

// queue waits for the writers queued before, where the dialect serialises
// them, and returns the function that lets the next one go.
func (s *Store) queue(ctx context.Context) (release func(), err error) {
	if s.sem == nil {
		return func() {}, nil
	}
	select {
	case s.sem <- struct{}{}:
		return func() { <-s.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// affected returns ErrNotFound when res changed no row.
func affected(res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return store.ErrNotFound
	}
	return nil
}

func (s *Store) rebind(query string) string {
	if !s.d.NumberedParams {
		return query
	}
	return Rebind(query)
}

// Rebind rewrites the ? placeholders of query as $1, $2, ...
func Rebind(query string) string {
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] != '?' {
			b.WriteByte(query[i])
			continue
		}
		n++
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(n))
	}
	return b.String()
}

// wrap prefixes err with the action and maps it onto the store's sentinel
// errors, keeping the driver's error in the chain.
func (s *Store) wrap(action string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s: %w", action, store.ErrNotFound)
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrUnavailable):
		return fmt.Errorf("%s: %w", action, err)
	}
	if sentinel := s.d.Classify(err); sentinel != nil {
		return fmt.Errorf("%s: %w: %w", action, sentinel, err)
	}
	return fmt.Errorf("%s: %w", action, err)
}

// dbTime is how a time is stored: unix microseconds, NULL for the zero time.
func dbTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// norm returns t as it will read back: UTC, to the microsecond.
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.UnixMicro(t.UnixMicro()).UTC()
}

// now is the current time as the store keeps it.
func now() time.Time { return norm(time.Now()) }

// timeCol scans a column written by dbTime.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.t = time.Time{}
	case int64:
		*c.t = time.UnixMicro(v).UTC()
	default:
		return fmt.Errorf("scan time: unexpected %T", v)
	}
	return nil
}
