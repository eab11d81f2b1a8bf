package sqlstore

// Single sign-on logins: the devgpu credential each one backs, the hash of
// the secret that renews it and the provider's refresh token (sealed by
// the caller) the control plane re-checks the person with.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/devgpu/devgpu/internal/store"
)

const ssoLoginColumns = `l.id, l.user_id, l.token_id, l.refresh_hash, l.provider_refresh, l.group_names, l.flow,
	l.created_at, l.checked_at, l.ended_at, l.end_reason`

func scanSSOLogin(l *store.SSOLogin) []any {
	return []any{&l.ID, &l.UserID, idCol{&l.TokenID}, &l.RefreshHash, &l.ProviderRefresh, groupsCol{&l.Groups}, &l.Flow,
		timeCol{&l.CreatedAt}, timeCol{&l.CheckedAt}, timeCol{&l.EndedAt}, &l.EndReason}
}

// dbGroups is how a login's groups are stored: a JSON list, [] for none.
func dbGroups(groups []string) (string, error) {
	if len(groups) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(groups)
	if err != nil {
		return "", fmt.Errorf("encode groups: %w", err)
	}
	return string(b), nil
}

// groupsCol scans a column written by dbGroups; no groups read back as nil.
type groupsCol struct{ groups *[]string }

func (c groupsCol) Scan(v any) error {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return fmt.Errorf("scan groups: unexpected %T", v)
	}
	var groups []string
	if err := decodeJSON(s, &groups); err != nil {
		return err
	}
	if len(groups) == 0 {
		groups = nil
	}
	*c.groups = groups
	return nil
}

// dbBytes is an optional byte string for the database: NULL when empty,
// which reads back as nil on every engine.
func dbBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// CreateSSOLogin inserts l and sets its ID; a zero CreatedAt becomes now
// and a zero CheckedAt CreatedAt. It sets in l what reads back: times to
// the microsecond in UTC, no groups and an empty provider refresh token
// as nil.
func (s *Store) CreateSSOLogin(ctx context.Context, l *store.SSOLogin) error {
	action := fmt.Sprintf("create sso login of user %d", l.UserID)
	if len(l.RefreshHash) == 0 {
		return fmt.Errorf("%s: empty refresh hash; give the login the hash of its refresh secret", action)
	}
	if l.CreatedAt.IsZero() {
		l.CreatedAt = now()
	}
	if l.CheckedAt.IsZero() {
		l.CheckedAt = l.CreatedAt
	}
	l.CreatedAt, l.CheckedAt, l.EndedAt = norm(l.CreatedAt), norm(l.CheckedAt), norm(l.EndedAt)
	if len(l.Groups) == 0 {
		l.Groups = nil
	}
	if len(l.ProviderRefresh) == 0 {
		l.ProviderRefresh = nil
	}
	groups, err := dbGroups(l.Groups)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	err = s.write(ctx, func() error {
		return s.queryRow(ctx, `INSERT INTO sso_logins (user_id, token_id, refresh_hash, provider_refresh, group_names, flow,
				created_at, checked_at, ended_at, end_reason)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			l.UserID, dbID(l.TokenID), l.RefreshHash, dbBytes(l.ProviderRefresh), groups, l.Flow,
			dbTime(l.CreatedAt), dbTime(l.CheckedAt), dbTime(l.EndedAt), l.EndReason).Scan(&l.ID)
	})
	return s.wrap(action, err)
}

// SSOLoginByRefreshHash returns the login whose refresh secret has this hash.
func (s *Store) SSOLoginByRefreshHash(ctx context.Context, hash []byte) (store.SSOLogin, error) {
	var l store.SSOLogin
	if len(hash) == 0 {
		return l, s.wrap("get sso login by refresh hash", store.ErrNotFound)
	}
	err := s.queryRow(ctx, `SELECT `+ssoLoginColumns+` FROM sso_logins l WHERE l.refresh_hash = ?`, hash).
		Scan(scanSSOLogin(&l)...)
	return l, s.wrap("get sso login by refresh hash", err)
}

// SSOLoginByToken returns the login whose current token is tokenID.
func (s *Store) SSOLoginByToken(ctx context.Context, tokenID int64) (store.SSOLogin, error) {
	var l store.SSOLogin
	// The newest, should the token ever back two.
	err := s.queryRow(ctx, `SELECT `+ssoLoginColumns+` FROM sso_logins l WHERE l.token_id = ? ORDER BY l.id DESC LIMIT 1`,
		tokenID).Scan(scanSSOLogin(&l)...)
	return l, s.wrap(fmt.Sprintf("get sso login of token %d", tokenID), err)
}

// UpdateSSOLogin writes the login's changeable fields: all but the user,
// the flow and the creation time.
func (s *Store) UpdateSSOLogin(ctx context.Context, l store.SSOLogin) error {
	action := fmt.Sprintf("update sso login %d", l.ID)
	if len(l.RefreshHash) == 0 {
		return fmt.Errorf("%s: empty refresh hash; give the login the hash of its refresh secret", action)
	}
	groups, err := dbGroups(l.Groups)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	err = s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE sso_logins SET token_id = ?, refresh_hash = ?, provider_refresh = ?, group_names = ?,
				checked_at = ?, ended_at = ?, end_reason = ?
			WHERE id = ?`,
			dbID(l.TokenID), l.RefreshHash, dbBytes(l.ProviderRefresh), groups,
			dbTime(l.CheckedAt), dbTime(l.EndedAt), l.EndReason, l.ID)
		if err != nil {
			return err
		}
		return affected(res)
	})
	return s.wrap(action, err)
}

// ListSSOLogins returns the logins by ID, only those not ended when
// activeOnly.
func (s *Store) ListSSOLogins(ctx context.Context, activeOnly bool) ([]store.SSOLogin, error) {
	q := `SELECT ` + ssoLoginColumns + ` FROM sso_logins l`
	if activeOnly {
		q += ` WHERE l.ended_at IS NULL`
	}
	rows, err := s.query(ctx, q+` ORDER BY l.id`)
	ls, err := collect(rows, err, func(rows *sql.Rows) (l store.SSOLogin, err error) {
		return l, rows.Scan(scanSSOLogin(&l)...)
	})
	return ls, s.wrap("list sso logins", err)
}
