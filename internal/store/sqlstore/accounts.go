package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/devgpu/devgpu/internal/store"
)

const userColumns = `u.id, u.name, u.org_admin, u.disabled, u.created_at`

func scanUser(u *store.User) []any {
	return []any{&u.ID, &u.Name, &u.OrgAdmin, &u.Disabled, timeCol{&u.CreatedAt}}
}

// CreateUser inserts u and sets its ID (and CreatedAt when zero).
func (s *Store) CreateUser(ctx context.Context, u *store.User) error {
	if u.CreatedAt.IsZero() {
		u.CreatedAt = now()
	}
	u.CreatedAt = norm(u.CreatedAt)
	err := s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO users (name, org_admin, disabled, created_at) VALUES (?, ?, ?, ?) RETURNING id`,
			u.Name, u.OrgAdmin, u.Disabled, dbTime(u.CreatedAt)).Scan(&u.ID)
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

// CreateToken inserts t and sets its ID (and CreatedAt when zero).
func (s *Store) CreateToken(ctx context.Context, t *store.Token) error {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = now()
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = norm(t.CreatedAt), norm(t.ExpiresAt), norm(t.RevokedAt)
	err := s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO tokens (user_id, name, prefix, hash, created_at, expires_at, revoked_at)
			VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			t.UserID, t.Name, t.Prefix, t.Hash, dbTime(t.CreatedAt), dbTime(t.ExpiresAt), dbTime(t.RevokedAt)).Scan(&t.ID)
	})
	return s.wrap(fmt.Sprintf("create token for user %d", t.UserID), err)
}

// TokenByHash returns the token with this hash and its user.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (store.Token, store.User, error) {
	var t store.Token
	var u store.User
	err := s.queryRow(ctx, `SELECT t.id, t.user_id, t.name, t.prefix, t.hash, t.created_at, t.expires_at, t.revoked_at, `+userColumns+`
		FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = ?`, hash).
		Scan(append([]any{&t.ID, &t.UserID, &t.Name, &t.Prefix, &t.Hash,
			timeCol{&t.CreatedAt}, timeCol{&t.ExpiresAt}, timeCol{&t.RevokedAt}}, scanUser(&u)...)...)
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
