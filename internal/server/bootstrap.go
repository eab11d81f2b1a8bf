package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// TokenPrefix starts every API token, so that leaked tokens are easy to
// find in logs and repositories.
const TokenPrefix = "dgp_"

// NewToken mints a token for the user, stores its hash, and returns the
// only copy of the token itself. A zero expires never expires.
func NewToken(ctx context.Context, st store.Store, userID int64, name string, now, expires time.Time) (string, store.Token, error) {
	return mintToken(ctx, st, store.Token{UserID: userID, Name: name, CreatedAt: now, ExpiresAt: expires})
}

// mintToken stores t with a new secret's prefix and hash, and returns the
// only copy of the secret.
func mintToken(ctx context.Context, st store.Store, t store.Token) (string, store.Token, error) {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", store.Token{}, fmt.Errorf("mint token: %w", err)
	}
	secret := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	token := TokenPrefix + secret
	hash := sha256.Sum256([]byte(token))
	t.Prefix, t.Hash = token[:len(TokenPrefix)+6], hash[:]
	if err := st.CreateToken(ctx, &t); err != nil {
		return "", store.Token{}, fmt.Errorf("mint token: %w", err)
	}
	return token, t, nil
}

// ValidToken reports whether token belongs to an active user of st.
func ValidToken(ctx context.Context, st store.Store, token string, now time.Time) bool {
	hash := sha256.Sum256([]byte(token))
	t, u, err := st.TokenByHash(ctx, hash[:])
	return err == nil && t.RevokedAt.IsZero() && !tokenExpired(t, now) && !u.Disabled
}

// tokenExpired reports whether t no longer works at now: from the instant
// of its expiry on, for authentication and for every check that a user
// still holds a working token alike.
func tokenExpired(t store.Token, now time.Time) bool {
	return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt)
}

// Bootstrap makes a new installation usable: an organisation admin named
// admin and, when dev is set, a project "default" with GPUs enabled. It
// returns a new token for the admin when it had to create the admin, or
// when mint is set; otherwise "".
func Bootstrap(ctx context.Context, st store.Store, admin string, dev, mint bool, now time.Time) (token string, err error) {
	err = st.InTx(ctx, func(tx store.Store) error {
		u, err := tx.UserByName(ctx, admin)
		if errors.Is(err, store.ErrNotFound) {
			u = store.User{Name: admin, OrgAdmin: true, CreatedAt: now}
			if err := tx.CreateUser(ctx, &u); err != nil {
				return err
			}
			mint = true
		} else if err != nil {
			return err
		}
		if dev {
			_, err := tx.ProjectByName(ctx, "default")
			if errors.Is(err, store.ErrNotFound) {
				p := store.Project{Name: "default", CreatedAt: now, UpdatedAt: now}
				err = tx.CreateProject(ctx, &p)
			}
			if err != nil {
				return err
			}
		}
		if mint {
			token, _, err = NewToken(ctx, tx, u.ID, "bootstrap", now, time.Time{})
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("bootstrap: %w", err)
	}
	return token, nil
}
