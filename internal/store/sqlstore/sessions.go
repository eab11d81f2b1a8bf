package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// activeSession is the condition on sessions s that it still holds its GPUs.
var activeSession = fmt.Sprintf(`s.state NOT IN ('%s', '%s')`, sdk.StateEnded, sdk.StateFailed)

// SyncGPUs makes the inventory equal to devices; see store.Store.
//
// A reserved device missing from devices is marked retired; EndSession
// deletes retired devices instead of freeing them. Free devices are never
// retired.
func (s *Store) SyncGPUs(ctx context.Context, devices []store.GPU) error {
	return s.wrap("sync GPUs", s.tx(ctx, func(tx *Store) error {
		if _, err := tx.exec(ctx, `UPDATE gpus SET retired = TRUE`); err != nil {
			return err
		}
		for _, g := range devices {
			if _, err := tx.exec(ctx, `INSERT INTO gpus (id, type, region, retired) VALUES (?, ?, ?, FALSE)
				ON CONFLICT (id) DO UPDATE SET type = excluded.type, region = excluded.region, retired = FALSE`,
				g.ID, g.Type, g.Region); err != nil {
				return fmt.Errorf("add %s: %w", g.ID, err)
			}
		}
		_, err := tx.exec(ctx, `DELETE FROM gpus WHERE retired = TRUE AND session_id IS NULL`)
		return err
	}))
}

// ListGPUs returns the inventory by ID.
func (s *Store) ListGPUs(ctx context.Context) ([]store.GPU, error) {
	rows, err := s.query(ctx, `SELECT id, type, region, COALESCE(session_id, '') FROM gpus ORDER BY id`)
	gs, err := collect(rows, err, func(rows *sql.Rows) (g store.GPU, err error) {
		return g, rows.Scan(&g.ID, &g.Type, &g.Region, &g.SessionID)
	})
	return gs, s.wrap("list GPUs", err)
}

// ReserveGPUs gives n free GPUs to the session, or none; see store.Store.
func (s *Store) ReserveGPUs(ctx context.Context, sessionID, gpuType, region string, n int) ([]string, error) {
	action := fmt.Sprintf("reserve %d %s GPUs in %s for session %s", n, gpuType, region, sessionID)
	if n < 0 {
		return nil, fmt.Errorf("%s: negative count", action)
	}
	var ids []string
	err := s.tx(ctx, func(tx *Store) error {
		rows, err := tx.query(ctx, `SELECT id FROM gpus WHERE session_id IS NULL AND type = ? AND region = ?
			ORDER BY id LIMIT ?`, gpuType, region, n)
		ids, err = collect(rows, err, func(rows *sql.Rows) (id string, err error) { return id, rows.Scan(&id) })
		if err != nil {
			return err
		}
		if len(ids) < n {
			return fmt.Errorf("%d of %d free: %w", len(ids), n, store.ErrNoCapacity)
		}
		for _, id := range ids {
			// InTx serialises every reservation, so these are still free.
			if _, err := tx.exec(ctx, `UPDATE gpus SET session_id = ? WHERE id = ?`, sessionID, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap(action, err)
	}
	return ids, nil
}

const sessionColumns = `s.id, s.project_id, p.name, s.user_id, u.name, s.state, s.gpu_type, s.region,
	s.attachments, s.detach_grace, s.created_at, s.started_at, s.ended_at,
	s.end_reason, s.error, s.detached_at, s.last_seen_at, s.image, s.end_actor, s.end_state,
	s.wait_until, s.queue_reason, s.served_by
	FROM sessions s JOIN projects p ON p.id = s.project_id JOIN users u ON u.id = s.user_id`

func scanSession(row interface{ Scan(...any) error }) (x store.Session, err error) {
	var grace int64
	err = row.Scan(&x.ID, &x.ProjectID, &x.Project, &x.UserID, &x.User, &x.State, &x.GPUType, &x.Region,
		&x.Attachments, &grace, timeCol{&x.CreatedAt}, timeCol{&x.StartedAt}, timeCol{&x.EndedAt},
		&x.EndReason, &x.Error, timeCol{&x.DetachedAt}, timeCol{&x.LastSeenAt}, &x.Image, &x.EndActor, &x.EndState,
		timeCol{&x.WaitUntil}, &x.QueueReason, &x.ServedBy)
	x.DetachGrace = time.Duration(grace)
	return x, err
}

// CreateSession inserts s (and sets CreatedAt when zero). Its GPUs are
// those reserved for s.ID, whatever s.GPUs says.
func (s *Store) CreateSession(ctx context.Context, x *store.Session) error {
	if x.ID == "" {
		return fmt.Errorf("create session: empty ID")
	}
	if x.CreatedAt.IsZero() {
		x.CreatedAt = now()
	}
	x.CreatedAt, x.StartedAt, x.EndedAt = norm(x.CreatedAt), norm(x.StartedAt), norm(x.EndedAt)
	x.DetachedAt, x.LastSeenAt = norm(x.DetachedAt), norm(x.LastSeenAt)
	x.WaitUntil = norm(x.WaitUntil)
	return s.wrap("create session "+x.ID, s.write(ctx, func() error {
		_, err := s.exec(ctx, `INSERT INTO sessions (id, project_id, user_id, state, gpu_type, region, attachments,
			detach_grace, created_at, started_at, ended_at, end_reason, error, detached_at, last_seen_at, image,
			end_actor, end_state, wait_until, queue_reason, served_by)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			x.ID, x.ProjectID, x.UserID, x.State, x.GPUType, x.Region, x.Attachments,
			int64(x.DetachGrace), dbTime(x.CreatedAt), dbTime(x.StartedAt), dbTime(x.EndedAt),
			x.EndReason, x.Error, dbTime(x.DetachedAt), dbTime(x.LastSeenAt), x.Image, x.EndActor, x.EndState,
			dbTime(x.WaitUntil), x.QueueReason, x.ServedBy)
		return err
	}))
}

// Session returns the session with this ID.
func (s *Store) Session(ctx context.Context, id string) (store.Session, error) {
	ss, err := s.sessions(ctx, ` WHERE s.id = ?`, id)
	if err == nil && len(ss) == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Session{}, s.wrap("get session "+id, err)
	}
	return ss[0], nil
}

// ListSessions returns the sessions f selects, oldest first.
func (s *Store) ListSessions(ctx context.Context, f store.SessionFilter) ([]store.Session, error) {
	var conds []string
	var args []any
	if f.UserID != 0 {
		conds, args = append(conds, `s.user_id = ?`), append(args, f.UserID)
	}
	if f.ProjectID != 0 {
		conds, args = append(conds, `s.project_id = ?`), append(args, f.ProjectID)
	}
	if f.ActiveOnly {
		conds = append(conds, activeSession)
	}
	switch f.State {
	case "":
	case sdk.StateQueued:
		conds = append(conds, queuedSession) // literally, for its index
	default:
		conds, args = append(conds, `s.state = ?`), append(args, f.State)
	}
	where := ""
	if len(conds) > 0 {
		where = ` WHERE ` + strings.Join(conds, ` AND `)
	}
	ss, err := s.sessions(ctx, where, args...)
	return ss, s.wrap("list sessions", err)
}

// sessions reads the sessions that where selects, with their GPUs: those
// reserved in the inventory while active, the copy EndSession kept after.
func (s *Store) sessions(ctx context.Context, where string, args ...any) ([]store.Session, error) {
	rows, err := s.query(ctx, `SELECT `+sessionColumns+where+` ORDER BY s.created_at, s.id`, args...)
	ss, err := collect(rows, err, func(rows *sql.Rows) (store.Session, error) { return scanSession(rows) })
	if err != nil || len(ss) == 0 {
		return ss, err
	}
	query, qargs := `SELECT g.session_id, g.id FROM gpus g JOIN sessions s ON s.id = g.session_id`+where+`
		UNION ALL SELECT g.session_id, g.gpu_id FROM session_gpus g JOIN sessions s ON s.id = g.session_id`+where+`
		ORDER BY 1, 2`, append(args, args...)
	if strings.Contains(where, activeSession) || strings.Contains(where, queuedSession) {
		// Active sessions hold their GPUs in the inventory; the kept copies
		// belong to ended ones. Admission runs this on every request, so
		// it must not scan the history.
		query, qargs = `SELECT g.session_id, g.id FROM gpus g JOIN sessions s ON s.id = g.session_id`+where+` ORDER BY 1, 2`, args
	}
	rows, err = s.query(ctx, query, qargs...)
	type pair struct{ session, gpu string }
	pairs, err := collect(rows, err, func(rows *sql.Rows) (p pair, err error) { return p, rows.Scan(&p.session, &p.gpu) })
	if err != nil {
		return nil, err
	}
	byID := make(map[string][]string)
	for _, p := range pairs {
		byID[p.session] = append(byID[p.session], p.gpu)
	}
	for i := range ss {
		ss[i].GPUs = byID[ss[i].ID]
	}
	return ss, nil
}

// UpdateSession writes the fields that change while a session stays in
// its state; see store.Store. It fails with ErrConflict when the session
// is in another state: an update racing a transition must not undo it.
func (s *Store) UpdateSession(ctx context.Context, x *store.Session) error {
	action := "update session " + x.ID
	x.StartedAt, x.DetachedAt, x.LastSeenAt = norm(x.StartedAt), norm(x.DetachedAt), norm(x.LastSeenAt)
	var n int64
	err := s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE sessions SET started_at = ?, attachments = ?, detached_at = ?,
			last_seen_at = ?, error = ? WHERE id = ? AND state = ? AND state NOT IN (?, ?)`,
			dbTime(x.StartedAt), x.Attachments, dbTime(x.DetachedAt), dbTime(x.LastSeenAt), x.Error,
			x.ID, x.State, sdk.StateEnded, sdk.StateFailed)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil || n > 0 {
		return s.wrap(action, err)
	}
	// Outside the write: why did it change nothing?
	var state string
	if err := s.queryRow(ctx, `SELECT state FROM sessions WHERE id = ?`, x.ID).Scan(&state); err != nil {
		return s.wrap(action, err)
	}
	if lifecycle.Final(state) || lifecycle.Final(x.State) {
		return s.wrap(action, fmt.Errorf("session is %s: %w", state, store.ErrConflict))
	}
	return s.wrap(action, fmt.Errorf("session is %s, not %s (states change by TransitionSession): %w",
		state, x.State, store.ErrConflict))
}

// TransitionSession moves a session to another state; see store.Store.
func (s *Store) TransitionSession(ctx context.Context, id, to string, change func(*store.Session)) (store.Session, error) {
	action := fmt.Sprintf("move session %s to %s", id, to)
	var out store.Session
	err := s.tx(ctx, func(tx *Store) error {
		cur, err := tx.Session(ctx, id)
		if err != nil {
			return err
		}
		if err := lifecycle.Check(cur.State, to); err != nil {
			return illegalMove{err}
		}
		next := cur
		if change != nil {
			change(&next)
		}
		next.ID, next.State = id, to
		if (to == sdk.StateStopping || lifecycle.Final(to)) && next.EndedAt.IsZero() {
			next.EndedAt = now()
		}
		next.StartedAt, next.EndedAt = norm(next.StartedAt), norm(next.EndedAt)
		next.DetachedAt, next.LastSeenAt = norm(next.DetachedAt), norm(next.LastSeenAt)
		res, err := tx.exec(ctx, `UPDATE sessions SET state = ?, started_at = ?, attachments = ?, detached_at = ?,
			last_seen_at = ?, error = ?, end_reason = ?, ended_at = ?, end_actor = ?, end_state = ?
			WHERE id = ? AND state = ?`,
			to, dbTime(next.StartedAt), next.Attachments, dbTime(next.DetachedAt), dbTime(next.LastSeenAt),
			next.Error, next.EndReason, dbTime(next.EndedAt), next.EndActor, next.EndState, id, cur.State)
		if err != nil {
			return err
		}
		if err := affected(res); err != nil {
			// The transaction serialises writers, so this is a bug.
			return fmt.Errorf("session changed under its transaction: %w", store.ErrConflict)
		}
		if lifecycle.Final(to) {
			// Keep which GPUs the session had, then give them back:
			// retired ones leave the inventory, the others become free.
			for _, q := range []string{
				`INSERT INTO session_gpus (session_id, gpu_id) SELECT session_id, id FROM gpus WHERE session_id = ?`,
				`DELETE FROM gpus WHERE session_id = ? AND retired = TRUE`,
				`UPDATE gpus SET session_id = NULL WHERE session_id = ?`,
			} {
				if _, err := tx.exec(ctx, q, id); err != nil {
					return err
				}
			}
		}
		out = next
		return nil
	})
	if err != nil {
		return store.Session{}, s.wrap(action, err)
	}
	return out, nil
}

// illegalMove is a *lifecycle.IllegalMove that is also store.ErrConflict.
type illegalMove struct{ err error }

func (e illegalMove) Error() string   { return e.err.Error() }
func (e illegalMove) Unwrap() []error { return []error{e.err, store.ErrConflict} }

// EndSession ends an active session and frees its GPUs; see store.Store.
// A zero at means now.
func (s *Store) EndSession(ctx context.Context, id, state, reason string, at time.Time) error {
	action := fmt.Sprintf("end session %s", id)
	if !lifecycle.Final(state) {
		return fmt.Errorf("%s: %s is not an end state", action, state)
	}
	if at.IsZero() {
		at = time.Now()
	}
	return s.wrap(action, s.tx(ctx, func(tx *Store) error {
		cur, err := tx.Session(ctx, id)
		if err != nil {
			return err
		}
		end := func(x *store.Session) { x.EndReason, x.EndedAt, x.EndState = reason, at, state }
		if lifecycle.Check(cur.State, state) != nil && lifecycle.Check(cur.State, sdk.StateStopping) == nil {
			if _, err := tx.TransitionSession(ctx, id, sdk.StateStopping, end); err != nil {
				return err
			}
		}
		_, err = tx.TransitionSession(ctx, id, state, end)
		return err
	}))
}
