package sqlstore

import (
	"context"
	"errors"

	"github.com/devgpu/devgpu/internal/store"
)

// PLACEHOLDER (store part): single sign-on logins and a user's memberships.
var errSSONotImplemented = errors.New("sso store: not implemented yet")

func (s *Store) ListUserMembers(ctx context.Context, userID int64) ([]store.Member, error) {
	return nil, errSSONotImplemented
}

func (s *Store) CreateSSOLogin(ctx context.Context, l *store.SSOLogin) error {
	return errSSONotImplemented
}

func (s *Store) SSOLoginByRefreshHash(ctx context.Context, hash []byte) (store.SSOLogin, error) {
	return store.SSOLogin{}, errSSONotImplemented
}

func (s *Store) SSOLoginByToken(ctx context.Context, tokenID int64) (store.SSOLogin, error) {
	return store.SSOLogin{}, errSSONotImplemented
}

func (s *Store) UpdateSSOLogin(ctx context.Context, l store.SSOLogin) error {
	return errSSONotImplemented
}

func (s *Store) ListSSOLogins(ctx context.Context, activeOnly bool) ([]store.SSOLogin, error) {
	return nil, errSSONotImplemented
}
