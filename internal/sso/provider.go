package sso

import (
	"context"
	"errors"
	"time"
)

// PLACEHOLDER (sso part): the signatures the server builds on; the sso
// part fills the bodies and may add to them (never change them without
// telling the coordinator).

// Identity is what a verified ID token says about a person.
type Identity struct {
	Subject string
	// Name is the configured username claim's value (the devgpu user
	// name, as names.User accepts it).
	Name   string
	Groups []string
	// Expiry is the ID token's.
	Expiry time.Time
}

// Error is a failure a person can act on: Error() is one sentence that
// names the cause and the fix. Unreachable marks the provider not
// answering (the server answers 503); Revoked marks a provider that
// refuses the refresh token (the account or its sign-in was revoked).
type Error struct {
	Msg         string
	Unreachable bool
	Revoked     bool
	Err         error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// IsUnreachable and IsRevoked classify an error from Verify or Refresh.
func IsUnreachable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Unreachable
}

func IsRevoked(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Revoked
}

// Provider is a configured identity provider. Discovery happens on first
// use (and again after a failure), so that a server starts while the
// provider is unreachable.
type Provider struct {
	cfg Config
	now func() time.Time
}

// New checks cfg (Validate) and fills its defaults; now is the clock ID
// tokens are checked against (nil: time.Now).
func New(cfg Config, now func() time.Time) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if now == nil {
		now = time.Now
	}
	return &Provider{cfg: cfg, now: now}, nil
}

// Config is the provider's configuration with defaults filled.
func (p *Provider) Config() Config { return p.cfg }

// Validate refuses a configuration that cannot work, in one sentence.
func (c Config) Validate() error { return nil }

// WithDefaults fills Scopes, UsernameClaim, GroupsClaim, SessionTTL and
// RecheckInterval when unset.
func (c Config) WithDefaults() Config { return c }

// Verify checks a raw ID token: signature against the provider's keys,
// issuer, audience (ClientID), expiry (with a clear clock-skew message),
// and nonce when nonce is not empty. It returns who it names.
func (p *Provider) Verify(ctx context.Context, rawIDToken, nonce string) (Identity, error) {
	return Identity{}, errors.New("sso: not implemented yet")
}

// Refresh redeems the provider's refresh token (as ClientID) and verifies
// the new ID token it answers; it returns the identity and the refresh
// token to keep (the provider's new one, or the same when it does not
// rotate). A refusal is an *Error with Revoked set.
func (p *Provider) Refresh(ctx context.Context, refreshToken string) (Identity, string, error) {
	return Identity{}, "", errors.New("sso: not implemented yet")
}

// Grants is what a person's groups give them.
type Grants struct {
	OrgAdmin bool
	// Projects maps project name → role; admin wins over developer when
	// several groups map to one project.
	Projects map[string]string
}

// Any reports whether the grants give anything at all.
func (g Grants) Any() bool { return g.OrgAdmin || len(g.Projects) > 0 }

// GrantsFor applies the mappings to groups.
func (c Config) GrantsFor(groups []string) Grants { return Grants{} }

// GrantingGroups lists every group a mapping names (sorted, once each),
// for "you are in none of the groups that grant access (...)".
func (c Config) GrantingGroups() []string { return nil }

// Seal encrypts a provider refresh token for the store with a key
// derived from key (the agent key); Open reverses it, failing when the
// key is not the one that sealed it.
func Seal(key []byte, plaintext string) ([]byte, error) {
	return nil, errors.New("sso: not implemented yet")
}
func Open(key, sealed []byte) (string, error) { return "", errors.New("sso: not implemented yet") }
