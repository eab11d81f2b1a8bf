package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/devgpu/devgpu/internal/store"
)

// SetCapacity replaces backend's rows of the capacity table with caps, in
// one transaction; see store.Store. It runs in InTx's serialised
// transaction, so that an admission never counts against half of a change.
func (s *Store) SetCapacity(ctx context.Context, backend string, caps []store.Capacity) error {
	action := fmt.Sprintf("set the capacity of backend %q", backend)
	type key struct{ typ, region string }
	seen := make(map[key]bool, len(caps))
	for _, c := range caps {
		switch k := (key{c.Type, c.Region}); {
		case c.Type == "":
			return fmt.Errorf("%s: a capacity has no GPU type; name the type of every entry", action)
		case c.Total < 0:
			return fmt.Errorf("%s: %d %s GPUs in %q is negative; report zero or more", action, c.Total, c.Type, c.Region)
		case seen[k]:
			return fmt.Errorf("%s: %s in %q is listed twice; report each type and region once", action, c.Type, c.Region)
		default:
			seen[k] = true
		}
	}
	return s.wrap(action, s.tx(ctx, func(tx *Store) error {
		if _, err := tx.exec(ctx, `DELETE FROM capacity WHERE backend = ?`, backend); err != nil {
			return err
		}
		for _, c := range caps {
			if _, err := tx.exec(ctx, `INSERT INTO capacity (backend, gpu_type, region, total) VALUES (?, ?, ?, ?)`,
				backend, c.Type, c.Region, c.Total); err != nil {
				return fmt.Errorf("add %s in %q: %w", c.Type, c.Region, err)
			}
		}
		return nil
	}))
}

// ListCapacity returns every backend's capacity; see store.Store.
func (s *Store) ListCapacity(ctx context.Context) ([]store.Capacity, error) {
	rows, err := s.query(ctx, `SELECT backend, gpu_type, region, total FROM capacity ORDER BY backend, gpu_type, region`)
	caps, err := collect(rows, err, func(rows *sql.Rows) (c store.Capacity, err error) {
		return c, rows.Scan(&c.Backend, &c.Type, &c.Region, &c.Total)
	})
	return caps, s.wrap("list capacity", err)
}
