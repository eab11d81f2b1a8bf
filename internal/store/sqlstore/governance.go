package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

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
	if f.Actor != "" {
		conds, args = append(conds, `actor = ?`), append(args, f.Actor)
	}
	switch prefix, isPrefix := f.ActionPrefix(); {
	case isPrefix && prefix == "": // "*": every action
	case isPrefix:
		// substr, not LIKE: SQLite's LIKE ignores case, and both engines
		// take _ and % as wildcards. Both count characters.
		conds, args = append(conds, `substr(action, 1, ?) = ?`), append(args, utf8.RuneCountInString(prefix), prefix)
	case f.Action != "":
		conds, args = append(conds, `action = ?`), append(args, f.Action)
	}
	// Stored to the microsecond: a bound between two microseconds keeps
	// the events of the later one on its side, and only those.
	if !f.Since.IsZero() {
		conds, args = append(conds, `at >= ?`), append(args, ceilMicro(f.Since))
	}
	if !f.Until.IsZero() {
		conds, args = append(conds, `at < ?`), append(args, ceilMicro(f.Until))
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
