package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// SetWarmPool creates, resizes or (Size 0) removes a warm pool.
func (s *Store) SetWarmPool(ctx context.Context, p store.WarmPool) error {
	action := fmt.Sprintf("set warm pool %d/%s/%s", p.ProjectID, p.GPUType, p.Image)
	if p.Size < 0 || p.GPUType == "" {
		return fmt.Errorf("%s: invalid size %d or GPU type %q", action, p.Size, p.GPUType)
	}
	return s.wrap(action, s.write(ctx, func() error {
		if p.Size == 0 {
			_, err := s.exec(ctx, `DELETE FROM warm_pools WHERE project_id = ? AND gpu_type = ? AND image = ?`, p.ProjectID, p.GPUType, p.Image)
			return err
		}
		_, err := s.exec(ctx, `INSERT INTO warm_pools (project_id, gpu_type, image, size) VALUES (?, ?, ?, ?)
			ON CONFLICT (project_id, gpu_type, image) DO UPDATE SET size = excluded.size`, p.ProjectID, p.GPUType, p.Image, p.Size)
		return err
	}))
}

// ListWarmPools returns every warm pool ordered by project, type and image.
func (s *Store) ListWarmPools(ctx context.Context) ([]store.WarmPool, error) {
	rows, err := s.query(ctx, `SELECT w.project_id, p.name, w.gpu_type, w.image, w.size
		FROM warm_pools w JOIN projects p ON p.id = w.project_id ORDER BY p.name, w.gpu_type, w.image`)
	pools, err := collect(rows, err, func(rows *sql.Rows) (w store.WarmPool, err error) {
		return w, rows.Scan(&w.ProjectID, &w.Project, &w.GPUType, &w.Image, &w.Size)
	})
	return pools, s.wrap("list warm pools", err)
}

// ClaimSession hands a running session of user from to user to.
func (s *Store) ClaimSession(ctx context.Context, id string, from, to int64, at time.Time) error {
	action := "claim session " + id
	return s.wrap(action, s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE sessions SET user_id = ?, started_at = ? WHERE id = ? AND user_id = ? AND state = ?`,
			to, dbTime(norm(at)), id, from, sdk.StateRunning)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return fmt.Errorf("not a running session of user %d: %w", from, store.ErrConflict)
		}
		return nil
	}))
}
