package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// activeSession is the condition on sessions s that it still holds its
// GPUs: admission counts their gpu_count.
var activeSession = fmt.Sprintf(`s.state NOT IN ('%s', '%s')`, sdk.StateEnded, sdk.StateFailed)

const sessionColumns = `s.id, s.project_id, p.name, s.user_id, u.name, s.state, s.gpu_type, s.region,
	s.backend, s.gpu_count, s.node, s.handle,
	s.attachments, s.detach_grace, s.created_at, s.started_at, s.ended_at,
	s.end_reason, s.error, s.detached_at, s.last_seen_at, s.image, s.end_actor, s.end_state,
	s.wait_until, s.queue_reason, s.served_by, s.starter,
	s.name, s.command, s.exit_status, s.exit_signal, s.log_offset, s.log_bytes
	FROM sessions s JOIN projects p ON p.id = s.project_id JOIN users u ON u.id = s.user_id`

func scanSession(row interface{ Scan(...any) error }) (x store.Session, err error) {
	var grace int64
	var exit sql.NullInt64
	err = row.Scan(&x.ID, &x.ProjectID, &x.Project, &x.UserID, &x.User, &x.State, &x.GPUType, &x.Region,
		&x.Backend, &x.GPUCount, &x.Node, &x.Handle,
		&x.Attachments, &grace, timeCol{&x.CreatedAt}, timeCol{&x.StartedAt}, timeCol{&x.EndedAt},
		&x.EndReason, &x.Error, timeCol{&x.DetachedAt}, timeCol{&x.LastSeenAt}, &x.Image, &x.EndActor, &x.EndState,
		timeCol{&x.WaitUntil}, &x.QueueReason, &x.ServedBy, &x.Starter,
		&x.Name, &x.Command, &exit, &x.ExitSignal, &x.LogOffset, &x.LogBytes)
	x.DetachGrace = time.Duration(grace)
	if exit.Valid {
		status := int(exit.Int64)
		x.ExitStatus = &status
	}
	return x, err
}

// CreateSession inserts s (and sets CreatedAt when zero), with its devices
// when s.GPUs lists them. Its exit and log fields start empty whatever s
// holds: SetExit and AppendLogs write them.
func (s *Store) CreateSession(ctx context.Context, x *store.Session) error {
	action := "create session " + x.ID
	if x.ID == "" {
		return fmt.Errorf("create session: empty ID")
	}
	if x.GPUCount < 0 {
		return fmt.Errorf("%s: %d GPUs is negative; ask for zero or more", action, x.GPUCount)
	}
	if err := checkDevices(x.GPUs); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	if x.CreatedAt.IsZero() {
		x.CreatedAt = now()
	}
	x.CreatedAt, x.StartedAt, x.EndedAt = norm(x.CreatedAt), norm(x.StartedAt), norm(x.EndedAt)
	x.DetachedAt, x.LastSeenAt = norm(x.DetachedAt), norm(x.LastSeenAt)
	x.WaitUntil = norm(x.WaitUntil)
	return s.wrap(action, s.atomic(ctx, func(tx *Store) error {
		_, err := tx.exec(ctx, `INSERT INTO sessions (id, project_id, user_id, state, gpu_type, region,
			backend, gpu_count, node, handle, attachments,
			detach_grace, created_at, started_at, ended_at, end_reason, error, detached_at, last_seen_at, image,
			end_actor, end_state, wait_until, queue_reason, served_by, starter, name, command)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			x.ID, x.ProjectID, x.UserID, x.State, x.GPUType, x.Region,
			x.Backend, x.GPUCount, x.Node, x.Handle, x.Attachments,
			int64(x.DetachGrace), dbTime(x.CreatedAt), dbTime(x.StartedAt), dbTime(x.EndedAt),
			x.EndReason, x.Error, dbTime(x.DetachedAt), dbTime(x.LastSeenAt), x.Image, x.EndActor, x.EndState,
			dbTime(x.WaitUntil), x.QueueReason, x.ServedBy, x.Starter, x.Name, x.Command)
		if err != nil {
			return err
		}
		return tx.setDevices(ctx, x.ID, x.GPUs)
	}))
}

// checkDevices refuses a device list that names a device twice: the
// runtime's report would be wrong, and session_gpus keys by device.
func checkDevices(devices []string) error {
	seen := make(map[string]bool, len(devices))
	for _, d := range devices {
		if d == "" {
			return fmt.Errorf("a device id is empty; record the ids the runtime reported")
		}
		if seen[d] {
			return fmt.Errorf("device %s is listed twice; record each device once", d)
		}
		seen[d] = true
	}
	return nil
}

// setDevices records the session's devices in the order given, replacing
// those recorded, unless devices is empty or they are recorded already
// (an update that carries the record as read rewrites nothing). It runs
// inside the statement group that writes the session's row.
func (s *Store) setDevices(ctx context.Context, id string, devices []string) error {
	if len(devices) == 0 {
		return nil
	}
	rows, err := s.query(ctx, `SELECT gpu_id FROM session_gpus WHERE session_id = ? ORDER BY ord`, id)
	cur, err := collect(rows, err, func(rows *sql.Rows) (d string, err error) { return d, rows.Scan(&d) })
	if err != nil {
		return fmt.Errorf("read the devices of session %s: %w", id, err)
	}
	if slices.Equal(cur, devices) {
		return nil
	}
	if _, err := s.exec(ctx, `DELETE FROM session_gpus WHERE session_id = ?`, id); err != nil {
		return fmt.Errorf("replace the devices of session %s: %w", id, err)
	}
	for i, d := range devices {
		if _, err := s.exec(ctx, `INSERT INTO session_gpus (session_id, gpu_id, ord) VALUES (?, ?, ?)`, id, d, i); err != nil {
			return fmt.Errorf("record device %s of session %s: %w", d, id, err)
		}
	}
	return nil
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

// sessions reads the sessions that where selects, with their devices in
// the order recorded. The devices' query joins the same selection, so that
// admission's read of the active sessions never scans the history.
func (s *Store) sessions(ctx context.Context, where string, args ...any) ([]store.Session, error) {
	rows, err := s.query(ctx, `SELECT `+sessionColumns+where+` ORDER BY s.created_at, s.id`, args...)
	ss, err := collect(rows, err, func(rows *sql.Rows) (store.Session, error) { return scanSession(rows) })
	if err != nil || len(ss) == 0 {
		return ss, err
	}
	rows, err = s.query(ctx, `SELECT g.session_id, g.gpu_id FROM session_gpus g JOIN sessions s ON s.id = g.session_id`+
		where+` ORDER BY g.session_id, g.ord`, args...)
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
// Empty GPUs leave the recorded devices as they are.
func (s *Store) UpdateSession(ctx context.Context, x *store.Session) error {
	action := "update session " + x.ID
	if err := checkDevices(x.GPUs); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	x.StartedAt, x.DetachedAt, x.LastSeenAt = norm(x.StartedAt), norm(x.DetachedAt), norm(x.LastSeenAt)
	var n int64
	err := s.atomic(ctx, func(tx *Store) error {
		res, err := tx.exec(ctx, `UPDATE sessions SET started_at = ?, attachments = ?, detached_at = ?,
			last_seen_at = ?, error = ?, node = ?, handle = ? WHERE id = ? AND state = ? AND state NOT IN (?, ?)`,
			dbTime(x.StartedAt), x.Attachments, dbTime(x.DetachedAt), dbTime(x.LastSeenAt), x.Error, x.Node, x.Handle,
			x.ID, x.State, sdk.StateEnded, sdk.StateFailed)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil || n == 0 {
			return err
		}
		return tx.setDevices(ctx, x.ID, x.GPUs)
	})
	if err != nil || n > 0 {
		return s.wrap(action, err)
	}
	return s.unchanged(ctx, action, x.ID, func(state string) string {
		if lifecycle.Final(state) || lifecycle.Final(x.State) {
			return "session is " + state
		}
		return fmt.Sprintf("session is %s, not %s (states change by TransitionSession)", state, x.State)
	})
}

// unchanged explains a write to session id, conditional on its state, that
// changed nothing: ErrNotFound when there is no such session, else
// ErrConflict with why(its state now). It reads outside the write.
func (s *Store) unchanged(ctx context.Context, action, id string, why func(state string) string) error {
	var state string
	if err := s.queryRow(ctx, `SELECT state FROM sessions WHERE id = ?`, id).Scan(&state); err != nil {
		return s.wrap(action, err)
	}
	return s.wrap(action, fmt.Errorf("%s: %w", why(state), store.ErrConflict))
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
		if err := checkDevices(next.GPUs); err != nil {
			return err
		}
		next.ID, next.State = id, to
		if (to == sdk.StateStopping || lifecycle.Final(to)) && next.EndedAt.IsZero() {
			next.EndedAt = now()
		}
		next.StartedAt, next.EndedAt = norm(next.StartedAt), norm(next.EndedAt)
		next.DetachedAt, next.LastSeenAt = norm(next.DetachedAt), norm(next.LastSeenAt)
		res, err := tx.exec(ctx, `UPDATE sessions SET state = ?, started_at = ?, attachments = ?, detached_at = ?,
			last_seen_at = ?, error = ?, node = ?, handle = ?, end_reason = ?, ended_at = ?, end_actor = ?, end_state = ?,
			starter = ?
			WHERE id = ? AND state = ?`,
			to, dbTime(next.StartedAt), next.Attachments, dbTime(next.DetachedAt), dbTime(next.LastSeenAt),
			next.Error, next.Node, next.Handle, next.EndReason, dbTime(next.EndedAt), next.EndActor, next.EndState,
			next.Starter, id, cur.State)
		if err != nil {
			return err
		}
		if err := affected(res); err != nil {
			// The transaction serialises writers, so this is a bug.
			return fmt.Errorf("session changed under its transaction: %w", store.ErrConflict)
		}
		if err := tx.setDevices(ctx, id, next.GPUs); err != nil {
			return err
		}
		// The record as written: what change set of the fields a move does
		// not write (or empty GPUs) is not.
		out, err = tx.Session(ctx, id)
		return err
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

// EndSession ends an active session; see store.Store. A zero at means now.
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
