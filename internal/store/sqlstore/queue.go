package sqlstore

import (
	"context"
	"fmt"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// queuedSession is the condition on sessions s that it is queued, written
// as the sessions_queued index's condition so that both engines use it.
var queuedSession = fmt.Sprintf(`s.state = '%s'`, sdk.StateQueued)

// UpdateQueued writes the request fields of a queued session; see
// store.Store.
func (s *Store) UpdateQueued(ctx context.Context, x *store.Session) error {
	action := "update queued session " + x.ID
	if x.GPUCount < 0 {
		return fmt.Errorf("%s: %d GPUs is negative; ask for zero or more", action, x.GPUCount)
	}
	x.WaitUntil = norm(x.WaitUntil)
	var n int64
	err := s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE sessions SET gpu_type = ?, region = ?, backend = ?, gpu_count = ?, image = ?,
			wait_until = ?, queue_reason = ?, served_by = ?, starter = ? WHERE id = ? AND state = ?`,
			x.GPUType, x.Region, x.Backend, x.GPUCount, x.Image, dbTime(x.WaitUntil), x.QueueReason, x.ServedBy,
			x.Starter, x.ID, sdk.StateQueued)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil || n > 0 {
		return s.wrap(action, err)
	}
	return s.unchanged(ctx, action, x.ID, func(state string) string { return "session is " + state + ", not queued" })
}

// QueuePosition counts the queued sessions of the project that are not
// younger than this one; see store.Store.
func (s *Store) QueuePosition(ctx context.Context, id string) (int, error) {
	var n int
	err := s.queryRow(ctx, `SELECT COUNT(*) FROM sessions x JOIN sessions s
		ON s.project_id = x.project_id AND `+queuedSession+`
		AND (s.created_at < x.created_at OR (s.created_at = x.created_at AND s.id <= x.id))
		WHERE x.id = ? AND x.state = ?`, id, sdk.StateQueued).Scan(&n)
	return n, s.wrap("queue position of session "+id, err)
}
