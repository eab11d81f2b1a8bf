package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// OrgPolicy returns the organisation policy, or the zero policy when none
// was ever set.
func (s *Store) OrgPolicy(ctx context.Context) (sdk.OrgPolicy, error) {
	var p sdk.OrgPolicy
	var doc string
	err := s.queryRow(ctx, `SELECT policy FROM org_policy WHERE id = 1`).Scan(&doc)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return sdk.OrgPolicy{}, nil
	case err == nil:
		err = decodeJSON(doc, &p)
	}
	if err != nil {
		return sdk.OrgPolicy{}, s.wrap("get org policy", err)
	}
	return p, nil
}

// SetOrgPolicy replaces the organisation policy.
func (s *Store) SetOrgPolicy(ctx context.Context, p sdk.OrgPolicy) error {
	doc, err := encodePolicy(p)
	if err != nil {
		return fmt.Errorf("set org policy: %w", err)
	}
	return s.wrap("set org policy", s.write(ctx, func() error {
		_, err := s.exec(ctx, `INSERT INTO org_policy (id, policy) VALUES (1, ?)
			ON CONFLICT (id) DO UPDATE SET policy = excluded.policy`, doc)
		return err
	}))
}

const auditColumns = `id, at, actor, action, project, target, before, after`

// AppendAudit inserts e and sets its ID (and At, now when zero).
func (s *Store) AppendAudit(ctx context.Context, e *store.AuditEvent) error {
	if e.At.IsZero() {
		e.At = now()
	}
	e.At = norm(e.At)
	err := s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO audit (at, actor, action, project, target, before, after)
			VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			dbTime(e.At), e.Actor, e.Action, e.Project, e.Target, e.Before, e.After).Scan(&e.ID)
	})
	return s.wrap("append audit event "+e.Action, err)
}

// ListAudit returns the events f selects, oldest first (by time, then by
// ID). With a limit, the newest are kept.
func (s *Store) ListAudit(ctx context.Context, f store.AuditFilter) ([]store.AuditEvent, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("list audit: negative limit %d", f.Limit)
	}
	var conds []string
	var args []any
	if f.Project != "" {
		conds, args = append(conds, `project = ?`), append(args, f.Project)
	}
	if !f.Since.IsZero() {
		// Stored to the microsecond: a Since between two microseconds
		// keeps the events of the later one, and only those.
		since := f.Since.UnixMicro()
		if norm(f.Since).Before(f.Since) {
			since++
		}
		conds, args = append(conds, `at >= ?`), append(args, since)
	}
	q := `SELECT ` + auditColumns + ` FROM audit`
	if len(conds) > 0 {
		q += ` WHERE ` + strings.Join(conds, ` AND `)
	}
	if f.Limit > 0 {
		q = `SELECT ` + auditColumns + ` FROM (` + q + ` ORDER BY at DESC, id DESC LIMIT ?) AS newest`
		args = append(args, f.Limit)
	}
	rows, err := s.query(ctx, q+` ORDER BY at, id`, args...)
	es, err := collect(rows, err, func(rows *sql.Rows) (e store.AuditEvent, err error) {
		return e, rows.Scan(&e.ID, timeCol{&e.At}, &e.Actor, &e.Action, &e.Project, &e.Target, &e.Before, &e.After)
	})
	return es, s.wrap("list audit", err)
}
