package sqlstore

// Replicas, leases, attachments and links: what several servers on one
// store agree on. Every time here that decides an expiry comes from the
// store's clock (Dialect.Now), never from the caller's.
//
// Attachments change a session's attachments and detached_at columns, which
// UpdateSession also writes from a record read earlier: AddAttachment,
// RemoveAttachment and RemoveReplica therefore run as InTx does, under the
// dialect's TxLock, so that a read-modify-write inside InTx never writes
// back a count one of them changed meanwhile.
//
// Locks, on engines that take row locks, are taken in one order so that
// no two of these transactions wait for each other: the TxLock, a
// replica's row, then session rows by id. AddAttachment keeps its
// replica's row from being deleted (key share); RemoveReplica locks it for
// update first, so that no attachment or link is added to a replica being
// removed.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// locked runs fn, statements that write, as one, under the dialect's
// TxLock: in a transaction of its own, or inside the caller's, where a
// failure undoes fn alone.
func (s *Store) locked(ctx context.Context, fn func(*Store) error) error {
	if s.inTx {
		return s.write(ctx, func() error { return fn(s) })
	}
	return s.begin(ctx, true, fn)
}

// clock replaces {now} in query with the store's clock.
func (s *Store) clock(query string) string {
	return strings.ReplaceAll(query, "{now}", s.d.Now)
}

const replicaColumns = `r.id, r.url, r.version, r.started_at, r.heartbeat_at`

func scanReplica(r *store.Replica) []any {
	return []any{&r.ID, &r.URL, &r.Version, timeCol{&r.StartedAt}, timeCol{&r.HeartbeatAt}}
}

// RegisterReplica inserts or replaces r, with its heartbeat (and its
// StartedAt, when zero) at the store's now, and sets both in r.
func (s *Store) RegisterReplica(ctx context.Context, r *store.Replica) error {
	action := "register replica " + r.ID
	if r.ID == "" {
		return errors.New("register replica: empty ID; give the replica an id")
	}
	r.StartedAt = norm(r.StartedAt)
	err := s.write(ctx, func() error {
		return s.queryRow(ctx, s.clock(`INSERT INTO replicas (id, url, version, started_at, heartbeat_at)
			VALUES (?, ?, ?, COALESCE(?, {now}), {now})
			ON CONFLICT (id) DO UPDATE SET url = excluded.url, version = excluded.version,
				started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
			RETURNING started_at, heartbeat_at`),
			r.ID, r.URL, r.Version, dbTime(r.StartedAt)).Scan(timeCol{&r.StartedAt}, timeCol{&r.HeartbeatAt})
	})
	return s.wrap(action, err)
}

// HeartbeatReplica moves the replica's heartbeat to the store's now;
// ErrNotFound when it is not registered (any more).
func (s *Store) HeartbeatReplica(ctx context.Context, id string) error {
	err := s.write(ctx, func() error {
		res, err := s.exec(ctx, s.clock(`UPDATE replicas SET heartbeat_at = {now} WHERE id = ?`), id)
		if err != nil {
			return err
		}
		return affected(res)
	})
	return s.wrap("heartbeat replica "+id, err)
}

// ListReplicas returns every registered replica, by id.
func (s *Store) ListReplicas(ctx context.Context) ([]store.Replica, error) {
	return s.replicas(ctx, "list replicas", ``)
}

// StaleReplicas returns the replicas whose heartbeat is older than maxAge
// by the store's clock, by id.
func (s *Store) StaleReplicas(ctx context.Context, maxAge time.Duration) ([]store.Replica, error) {
	return s.replicas(ctx, "list stale replicas", s.clock(` WHERE r.heartbeat_at < {now} - ?`), maxAge.Microseconds())
}

func (s *Store) replicas(ctx context.Context, action, where string, args ...any) ([]store.Replica, error) {
	rows, err := s.query(ctx, `SELECT `+replicaColumns+` FROM replicas r`+where+` ORDER BY r.id`, args...)
	rs, err := collect(rows, err, func(rows *sql.Rows) (r store.Replica, err error) {
		return r, rows.Scan(scanReplica(&r)...)
	})
	return rs, s.wrap(action, err)
}

// RemoveReplica forgets the replica with its attachments and links; see
// store.Store. Removing one that is not registered does nothing, so that
// two replicas that both saw it die may both remove it.
func (s *Store) RemoveReplica(ctx context.Context, id string, at time.Time) ([]string, error) {
	if at.IsZero() {
		at = now()
	}
	at = norm(at)
	var changed []string
	err := s.locked(ctx, func(tx *Store) error {
		changed = nil
		var found string
		err := tx.queryRow(ctx, `SELECT id FROM replicas WHERE id = ?`+tx.d.ForUpdate, id).Scan(&found)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		rows, err := tx.query(ctx, `SELECT id FROM sessions WHERE id IN
			(SELECT session_id FROM attachments WHERE replica = ?) ORDER BY id`+tx.d.ForUpdate, id)
		changed, err = collect(rows, err, func(rows *sql.Rows) (id string, err error) { return id, rows.Scan(&id) })
		if err != nil {
			return fmt.Errorf("read its sessions: %w", err)
		}
		if _, err := tx.exec(ctx, `DELETE FROM attachments WHERE replica = ?`, id); err != nil {
			return fmt.Errorf("remove its attachments: %w", err)
		}
		for _, sessionID := range changed {
			if _, err := tx.recountAttachments(ctx, sessionID, at); err != nil {
				return err
			}
		}
		if _, err := tx.exec(ctx, `DELETE FROM links WHERE replica = ?`, id); err != nil {
			return fmt.Errorf("remove its links: %w", err)
		}
		_, err = tx.exec(ctx, `DELETE FROM replicas WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return nil, s.wrap("remove replica "+id, err)
	}
	return changed, nil
}

// AcquireLease takes or renews the lease in one statement, so that of
// replicas calling at once exactly one wins; see store.Store.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (store.Lease, error) {
	action := fmt.Sprintf("acquire lease %s for %s", name, holder)
	if holder == "" {
		return store.Lease{}, fmt.Errorf("%s: empty holder; name the replica that takes it", action)
	}
	if ttl <= 0 {
		return store.Lease{}, fmt.Errorf("%s: ttl %v is not positive; give the lease a lifetime", action, ttl)
	}
	l := store.Lease{Name: name}
	found := true
	err := s.write(ctx, func() error {
		// SET reads the row as it was: holder on the right of = is the
		// previous holder. The epoch rises when the lease changes hands,
		// a released lease (holder '') included.
		err := s.queryRow(ctx, s.clock(`INSERT INTO leases (name, holder, epoch, expires_at) VALUES (?, ?, 1, {now} + ?)
			ON CONFLICT (name) DO UPDATE SET
				epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch ELSE leases.epoch + 1 END,
				holder = excluded.holder,
				expires_at = {now} + ?
			WHERE leases.holder = excluded.holder OR leases.expires_at <= {now}
			RETURNING holder, epoch, expires_at`),
			name, holder, ttl.Microseconds(), ttl.Microseconds()).Scan(&l.Holder, &l.Epoch, timeCol{&l.ExpiresAt})
		if errors.Is(err, sql.ErrNoRows) {
			found = false
			return nil
		}
		return err
	})
	if err != nil {
		return store.Lease{}, s.wrap(action, err)
	}
	if !found {
		cur, err := s.Lease(ctx, name)
		if err != nil {
			return store.Lease{}, fmt.Errorf("%s: %w", action, store.ErrLeaseHeld)
		}
		return cur, fmt.Errorf("%s: %w: %s holds it until %s", action, store.ErrLeaseHeld,
			cur.Holder, cur.ExpiresAt.Format(time.RFC3339Nano))
	}
	return l, nil
}

// ReleaseLease ends holder's lease now; a lease holder no longer holds is
// left as it is.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	err := s.write(ctx, func() error {
		_, err := s.exec(ctx, s.clock(`UPDATE leases SET holder = '', expires_at = {now} WHERE name = ? AND holder = ?`), name, holder)
		return err
	})
	return s.wrap(fmt.Sprintf("release lease %s of %s", name, holder), err)
}

// Lease returns the lease as recorded: one that expired keeps its last
// holder; one released has Holder "". ErrNotFound when never taken.
func (s *Store) Lease(ctx context.Context, name string) (store.Lease, error) {
	l := store.Lease{Name: name}
	err := s.queryRow(ctx, `SELECT holder, epoch, expires_at FROM leases WHERE name = ?`, name).
		Scan(&l.Holder, &l.Epoch, timeCol{&l.ExpiresAt})
	if err != nil {
		return store.Lease{}, s.wrap("read lease "+name, err)
	}
	return l, nil
}

// CheckLease is the fence; see store.Store. On PostgreSQL it locks the
// lease's row, so AcquireLease by another holder waits for the caller's
// transaction to end; on SQLite the transaction holds the only write lock.
func (s *Store) CheckLease(ctx context.Context, name, holder string, epoch int64) error {
	action := fmt.Sprintf("check lease %s of %s at epoch %d", name, holder, epoch)
	var cur store.Lease
	var live bool
	err := s.queryRow(ctx, s.clock(`SELECT holder, epoch, expires_at, expires_at > {now} FROM leases WHERE name = ?`)+s.d.ForUpdate, name).
		Scan(&cur.Holder, &cur.Epoch, timeCol{&cur.ExpiresAt}, &live)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s: %w: nobody ever took it", action, store.ErrFenced)
	case err != nil:
		return s.wrap(action, err)
	case cur.Holder != holder || cur.Epoch != epoch:
		return fmt.Errorf("%s: %w: %q holds it at epoch %d", action, store.ErrFenced, cur.Holder, cur.Epoch)
	case !live:
		return fmt.Errorf("%s: %w: it expired at %s", action, store.ErrFenced, cur.ExpiresAt.Format(time.RFC3339Nano))
	}
	return nil
}

// AddAttachment records a; see store.Store. ErrNotFound when the session
// is not running or the replica is not registered.
func (s *Store) AddAttachment(ctx context.Context, a *store.Attachment) error {
	action := fmt.Sprintf("attach to session %s through replica %s", a.SessionID, a.Replica)
	if a.OpenedAt.IsZero() {
		a.OpenedAt = now()
	}
	a.OpenedAt = norm(a.OpenedAt)
	err := s.locked(ctx, func(tx *Store) error {
		// Every check before the first write: on SQLite a failure inside
		// InTx does not undo what the method wrote before it.
		var found string
		err := tx.queryRow(ctx, `SELECT id FROM replicas WHERE id = ?`+tx.d.ForKeyShare, a.Replica).Scan(&found)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: replica %s is not registered (declared dead?); register it again", store.ErrNotFound, a.Replica)
		}
		if err != nil {
			return err
		}
		var state string
		err = tx.queryRow(ctx, `SELECT state FROM sessions WHERE id = ?`+tx.d.ForUpdate, a.SessionID).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no session %s", store.ErrNotFound, a.SessionID)
		}
		if err != nil {
			return err
		}
		if state != sdk.StateRunning {
			return fmt.Errorf("%w: session %s is %s, not running", store.ErrNotFound, a.SessionID, state)
		}
		if err := tx.queryRow(ctx, `INSERT INTO attachments (session_id, replica, user_id, opened_at) VALUES (?, ?, ?, ?) RETURNING id`,
			a.SessionID, a.Replica, a.UserID, dbTime(a.OpenedAt)).Scan(&a.ID); err != nil {
			return err
		}
		_, err = tx.recountAttachments(ctx, a.SessionID, a.OpenedAt)
		return err
	})
	return s.wrap(action, err)
}

// RemoveAttachment forgets attachment id; see store.Store. ErrNotFound
// when the attachment was gone already: 0 left would read as "the last
// shell closed" though other replicas may hold shells on its session.
func (s *Store) RemoveAttachment(ctx context.Context, id int64, at time.Time) (int, error) {
	if at.IsZero() {
		at = now()
	}
	at = norm(at)
	left := 0
	err := s.locked(ctx, func(tx *Store) error {
		left = 0
		var sessionID string
		err := tx.queryRow(ctx, `SELECT session_id FROM attachments WHERE id = ?`, id).Scan(&sessionID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: it was removed already (its replica was declared dead?)", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `SELECT id FROM sessions WHERE id = ?`+tx.d.ForUpdate, sessionID); err != nil {
			return fmt.Errorf("lock session %s: %w", sessionID, err)
		}
		if _, err := tx.exec(ctx, `DELETE FROM attachments WHERE id = ?`, id); err != nil {
			return err
		}
		left, err = tx.recountAttachments(ctx, sessionID, at)
		return err
	})
	if err != nil {
		return 0, s.wrap(fmt.Sprintf("remove attachment %d", id), err)
	}
	return left, nil
}

// recountAttachments sets the session's attachments to the count of its
// rows, and its detached_at to at when none is left (keeping an earlier
// one), or to NULL while some are. The caller holds the session's row.
func (s *Store) recountAttachments(ctx context.Context, sessionID string, at time.Time) (int, error) {
	var n int
	if err := s.queryRow(ctx, `SELECT COUNT(*) FROM attachments WHERE session_id = ?`, sessionID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the attachments of session %s: %w", sessionID, err)
	}
	if _, err := s.exec(ctx, `UPDATE sessions SET attachments = ?,
		detached_at = CASE WHEN ? > 0 THEN NULL ELSE COALESCE(detached_at, ?) END WHERE id = ?`,
		n, n, dbTime(at), sessionID); err != nil {
		return 0, fmt.Errorf("record the attachments of session %s: %w", sessionID, err)
	}
	return n, nil
}

// ListAttachments returns the session's attachments, by id.
func (s *Store) ListAttachments(ctx context.Context, sessionID string) ([]store.Attachment, error) {
	rows, err := s.query(ctx, `SELECT id, session_id, replica, user_id, opened_at FROM attachments
		WHERE session_id = ? ORDER BY id`, sessionID)
	as, err := collect(rows, err, func(rows *sql.Rows) (a store.Attachment, err error) {
		return a, rows.Scan(&a.ID, &a.SessionID, &a.Replica, &a.UserID, timeCol{&a.OpenedAt})
	})
	return as, s.wrap("list the attachments of session "+sessionID, err)
}

// SetLink records that replica holds the session's agent link; ErrNotFound
// when the session or the replica is unknown.
func (s *Store) SetLink(ctx context.Context, sessionID, replica string) error {
	err := s.write(ctx, func() error {
		_, err := s.exec(ctx, `INSERT INTO links (session_id, replica) VALUES (?, ?)
			ON CONFLICT (session_id) DO UPDATE SET replica = excluded.replica`, sessionID, replica)
		return err
	})
	return s.wrap(fmt.Sprintf("record the link of session %s at replica %s", sessionID, replica), err)
}

// ClearLink forgets the session's link if replica still holds it.
func (s *Store) ClearLink(ctx context.Context, sessionID, replica string) error {
	err := s.write(ctx, func() error {
		_, err := s.exec(ctx, `DELETE FROM links WHERE session_id = ? AND replica = ?`, sessionID, replica)
		return err
	})
	return s.wrap(fmt.Sprintf("clear the link of session %s at replica %s", sessionID, replica), err)
}

// LinkOf returns the replica that holds the session's agent link.
func (s *Store) LinkOf(ctx context.Context, sessionID string) (store.Replica, error) {
	var r store.Replica
	err := s.queryRow(ctx, `SELECT `+replicaColumns+` FROM links l JOIN replicas r ON r.id = l.replica
		WHERE l.session_id = ?`, sessionID).Scan(scanReplica(&r)...)
	if err != nil {
		return store.Replica{}, s.wrap("find the link of session "+sessionID, err)
	}
	return r, nil
}
