package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

const userColumns = `u.id, u.name, u.org_admin, u.disabled, u.service_account, u.subject, u.org_admin_from_groups, u.created_at`

func scanUser(u *store.User) []any {
	return []any{&u.ID, &u.Name, &u.OrgAdmin, &u.Disabled, &u.ServiceAccount, &u.Subject, &u.OrgAdminFromGroups, timeCol{&u.CreatedAt}}
}

// CreateUser inserts u and sets its ID (and CreatedAt when zero).
func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	if u.CreatedAt.IsZero() {
		u.CreatedAt = now()
	}
	u.CreatedAt = norm(u.CreatedAt)
	err := s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO users (name, org_admin, disabled, service_account, subject, org_admin_from_groups, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			u.Name, u.OrgAdmin, u.Disabled, u.ServiceAccount, u.Subject, u.OrgAdminFromGroups, dbTime(u.CreatedAt)).Scan(&u.ID)
	})
	return s.wrap("create user "+u.Name, err)
}

// UserByName returns the user with this name.
func (s *Store) UserByName(ctx context.Context, name string) (store.User, error) {
	var u store.User
	err := s.queryRow(ctx, `SELECT `+userColumns+` FROM users u WHERE u.name = ?`, name).Scan(scanUser(&u)...)
	return u, s.wrap("get user "+name, err)
}

// UserByID returns the user with this ID.
func (s *Store) UserByID(ctx context.Context, id int64) (store.User, error) {
	var u store.User
	err := s.queryRow(ctx, `SELECT `+userColumns+` FROM users u WHERE u.id = ?`, id).Scan(scanUser(&u)...)
	return u, s.wrap(fmt.Sprintf("get user %d", id), err)
}

// ListUsers returns all users by name.
func (s *Store) ListUsers(ctx context.Context) ([]store.User, error) {
	rows, err := s.query(ctx, `SELECT `+userColumns+` FROM users u ORDER BY u.name`)
	us, err := collect(rows, err, func(rows *sql.Rows) (u store.User, err error) {
		return u, rows.Scan(scanUser(&u)...)
	})
	return us, s.wrap("list users", err)
}

// UpdateUser writes the user's changeable fields: all but the name and
// the creation time.
func (s *Store) UpdateUser(ctx context.Context, u store.User) error {
	err := s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE users SET org_admin = ?, disabled = ?, service_account = ?, subject = ?,
			org_admin_from_groups = ? WHERE id = ?`,
			u.OrgAdmin, u.Disabled, u.ServiceAccount, u.Subject, u.OrgAdminFromGroups, u.ID)
		if err != nil {
			return err
		}
		return affected(res)
	})
	return s.wrap(fmt.Sprintf("update user %d", u.ID), err)
}

// CreateToken inserts t and sets its ID (and CreatedAt when zero).
func (s *Store) CreateToken(ctx context.Context, t *store.Token) error {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = now()
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = norm(t.CreatedAt), norm(t.ExpiresAt), norm(t.RevokedAt)
	err := s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO tokens (user_id, name, prefix, hash, created_at, expires_at, revoked_at, parent_id, scope, method)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			t.UserID, t.Name, t.Prefix, t.Hash, dbTime(t.CreatedAt), dbTime(t.ExpiresAt), dbTime(t.RevokedAt),
			dbID(t.ParentID), t.Scope, t.Method).Scan(&t.ID)
	})
	return s.wrap(fmt.Sprintf("create token for user %d", t.UserID), err)
}

const tokenColumns = `t.id, t.user_id, t.name, t.prefix, t.hash, t.created_at, t.expires_at, t.revoked_at, t.parent_id, t.scope, t.method`

func scanToken(t *store.Token) []any {
	return []any{&t.ID, &t.UserID, &t.Name, &t.Prefix, &t.Hash,
		timeCol{&t.CreatedAt}, timeCol{&t.ExpiresAt}, timeCol{&t.RevokedAt}, idCol{&t.ParentID}, &t.Scope, &t.Method}
}

// dbID is an optional reference for the database: NULL for 0.
func dbID(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

// idCol scans an optional reference, NULL as 0.
type idCol struct{ id *int64 }

func (c idCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.id = 0
	case int64:
		*c.id = v
	default:
		return fmt.Errorf("scan id: unexpected %T", v)
	}
	return nil
}

// ListTokens returns the user's tokens, or everyone's for userID 0, by ID.
func (s *Store) ListTokens(ctx context.Context, userID int64) ([]store.Token, error) {
	q, args := `SELECT `+tokenColumns+` FROM tokens t`, []any{}
	if userID != 0 {
		q, args = q+` WHERE t.user_id = ?`, append(args, userID)
	}
	rows, err := s.query(ctx, q+` ORDER BY t.id`, args...)
	ts, err := collect(rows, err, func(rows *sql.Rows) (t store.Token, err error) {
		return t, rows.Scan(scanToken(&t)...)
	})
	return ts, s.wrap(fmt.Sprintf("list tokens of user %d", userID), err)
}

// TokenByID returns the token with this ID.
func (s *Store) TokenByID(ctx context.Context, id int64) (store.Token, error) {
	var t store.Token
	err := s.queryRow(ctx, `SELECT `+tokenColumns+` FROM tokens t WHERE t.id = ?`, id).Scan(scanToken(&t)...)
	return t, s.wrap(fmt.Sprintf("get token %d", id), err)
}

// RevokeToken revokes the token and every token below it at at (a zero
// at means now), in one statement; one revoked before keeps its first
// revocation time.
func (s *Store) RevokeToken(ctx context.Context, id int64, at time.Time) error {
	if at.IsZero() {
		at = time.Now()
	}
	err := s.write(ctx, func() error {
		// Every engine counts the rows the WHERE matched, changed or not:
		// none when the token itself does not exist.
		res, err := s.exec(ctx, `WITH RECURSIVE tree (id) AS (
				SELECT id FROM tokens WHERE id = ?
				UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id)
			UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id IN (SELECT id FROM tree)`, id, dbTime(norm(at)))
		if err != nil {
			return err
		}
		return affected(res)
	})
	return s.wrap(fmt.Sprintf("revoke token %d", id), err)
}

// TokenByHash returns the token with this hash and its user.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (store.Token, store.User, error) {
	var t store.Token
	var u store.User
	err := s.queryRow(ctx, `SELECT `+tokenColumns+`, `+userColumns+`
		FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = ?`, hash).
		Scan(append(scanToken(&t), scanUser(&u)...)...)
	return t, u, s.wrap("get token", err)
}

// collect reads every row of rows with scan; err is that of the query.
func collect[T any](rows *sql.Rows, err error, scan func(*sql.Rows) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
