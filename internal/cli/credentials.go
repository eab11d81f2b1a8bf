package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// How a credential was obtained (credential.Method).
const (
	methodToken = "token" // an API token
	methodSSO   = "sso"   // single sign-on: devgpu's short-lived credential
)

// refreshBefore is how long before its expiry a single sign-on credential
// is renewed.
const refreshBefore = 10 * time.Minute

// renewTimeout bounds one renewal.
const renewTimeout = 30 * time.Second

// credential is what the CLI holds for one server. The config file is
// written with mode 0600: it holds secrets.
type credential struct {
	Method string `json:"method"`
	Token  string `json:"token"`
	// User is who the credential logs in as, for messages.
	User string `json:"user,omitempty"`
	// ExpiresAt, RefreshToken and Flow are a single sign-on's.
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
	RefreshToken string     `json:"refresh_token,omitempty"`
	Flow         string     `json:"flow,omitempty"`
	// CAFile is the server's CA file, when it needs one.
	CAFile string `json:"ca_file,omitempty"`
}

// serverKey is the key of a server in config.Credentials.
func serverKey(url string) string { return strings.TrimSuffix(url, "/") }

// pick sets Token (and CAFile) from the credential of the current server
// after DEVGPU_URL may have changed it from fileURL. The file's own token
// wins when someone changed it by hand (an API token then).
func (c *config) pick(fileURL string) {
	cr, ok := c.Credentials[serverKey(c.URL)]
	if !ok {
		return
	}
	switch {
	case serverKey(c.URL) != serverKey(fileURL):
		c.Token = cr.Token
		if cr.CAFile != "" {
			c.CAFile = cr.CAFile
		}
	case c.Token == "":
		c.Token = cr.Token
	}
}

// current is the current server's credential; a token with no saved
// credential, or from DEVGPU_TOKEN, is an API token.
func (c config) current() credential {
	if cr, ok := c.Credentials[serverKey(c.URL)]; ok && cr.Token == c.Token && !c.tokenFromEnv {
		return cr
	}
	return credential{Method: methodToken, Token: c.Token, CAFile: c.CAFile}
}

// settle files the current server's token under Credentials before the
// config is written.
func (c *config) settle() {
	if c.URL == "" || c.Token == "" {
		return
	}
	cr := c.current()
	cr.CAFile = c.CAFile
	c.setCredential(c.URL, cr)
}

// setCredential saves cr as url's credential (and the top-level token
// when url is the current server).
func (c *config) setCredential(url string, cr credential) {
	if c.Credentials == nil {
		c.Credentials = map[string]credential{}
	}
	c.Credentials[serverKey(url)] = cr
	if serverKey(url) == serverKey(c.URL) {
		c.Token = cr.Token
	}
}

// removeCredential forgets url's credential.
func (c *config) removeCredential(url string) {
	delete(c.Credentials, serverKey(url))
	if len(c.Credentials) == 0 {
		c.Credentials = nil
	}
	if serverKey(url) == serverKey(c.URL) {
		c.Token = ""
	}
}

// ssoEndedError is a single sign-on the server will not renew: the
// person, or their sign-in, was revoked.
type ssoEndedError struct {
	url string
	err error
}

func (e *ssoEndedError) Error() string {
	return fmt.Sprintf("your single sign-on to %s has ended (%s); run `devgpu login %s`", e.url, strings.TrimSuffix(e.err.Error(), "."), e.url)
}
func (e *ssoEndedError) Unwrap() error { return e.err }

// keepFresh renews the current server's single sign-on when it expires
// within refreshBefore, and sets client.Renew to renew it whenever the
// server refuses it. A renewal that fails while the credential still
// works is only reported.
func (c *config) keepFresh(ctx context.Context, client *sdk.Client, now time.Time) error {
	cr := c.current()
	if cr.Method != methodSSO || cr.RefreshToken == "" {
		return nil
	}
	client.Renew = func(ctx context.Context) (string, error) {
		return c.renew(ctx)
	}
	if cr.ExpiresAt != nil && cr.ExpiresAt.Sub(now) > refreshBefore {
		return nil
	}
	token, err := c.renew(ctx)
	var ended *ssoEndedError
	switch {
	case err == nil:
		client.Token = token
		return nil
	case errors.As(err, &ended), cr.ExpiresAt == nil || !cr.ExpiresAt.After(now):
		return err
	default:
		fmt.Fprintf(os.Stderr, "devgpu: %s; the current credential works until %s\n", oneLine(err.Error()), cr.ExpiresAt.Local().Format(time.Kitchen))
		return nil
	}
}

// renew trades the current server's refresh token for a new credential,
// saves it and returns its token.
func (c *config) renew(ctx context.Context) (string, error) {
	cr := c.current()
	// Each refresh token is good once: one devgpu at a time renews, and
	// the others take what it saved. A renewal takes up to renewTimeout.
	unlock, err := lockConfig(ctx, 2*renewTimeout)
	if err != nil {
		return "", err
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(ctx, renewTimeout)
	defer cancel()
	// What is saved now is the latest: another devgpu may have renewed
	// (or logged in or out) since this one read the config. Its refresh
	// secret is then spent, and sending it would end the sign-in.
	saved, path, err := readConfigFile()
	if err != nil {
		return "", err
	}
	s, ok := saved.Credentials[serverKey(c.URL)]
	switch {
	case !ok:
		return "", fmt.Errorf("you logged out of %s in another devgpu (config: %s); run `devgpu login %s`", serverKey(c.URL), path, serverKey(c.URL))
	case s.Token != cr.Token || s.RefreshToken != cr.RefreshToken:
		c.setCredential(c.URL, s)
		return s.Token, nil
	}
	rc, err := newSDKClient(c.URL, "", c.CAFile)
	if err != nil {
		return "", err
	}
	if err := checkSSOServerURL(rc.URL); err != nil {
		return "", err // a login saved by an older devgpu
	}
	got, err := rc.Refresh(ctx, cr.RefreshToken)
	if err != nil {
		var apiErr *sdk.Error
		if errors.As(err, &apiErr) && apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != http.StatusTooManyRequests {
			return "", &ssoEndedError{url: serverKey(c.URL), err: err}
		}
		return "", fmt.Errorf("could not renew your single sign-on to %s: %w", serverKey(c.URL), err)
	}
	cr.Token, cr.RefreshToken = got.Token, got.RefreshToken
	if got.User != "" {
		cr.User = got.User
	}
	exp := got.ExpiresAt
	cr.ExpiresAt = &exp
	c.setCredential(c.URL, cr)
	if err := saveCredentialLocked(c.URL, &cr); err != nil {
		return "", err
	}
	return cr.Token, nil
}

// saveTimeout bounds the wait for the config's lock to save a login or a
// logout.
const saveTimeout = 2 * renewTimeout

// saveCredential updates url's credential in the config file (nil removes
// it), leaving the rest of the file as it is: the environment's overrides
// are not written.
func saveCredential(url string, cr *credential) error {
	unlock, err := lockConfig(context.Background(), saveTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	return saveCredentialLocked(url, cr)
}

// saveCredentialLocked is saveCredential with the config's lock held.
func saveCredentialLocked(url string, cr *credential) error {
	f, _, err := readConfigFile()
	if err != nil {
		return err
	}
	if cr == nil {
		f.removeCredential(url)
	} else {
		f.setCredential(url, *cr)
	}
	_, err = saveConfig(f)
	return err
}

// lockPoll is how often a devgpu waiting for another's renewal looks
// again.
const lockPoll = 50 * time.Millisecond

// lockConfig takes the config's lock (one renewal, or one change of the
// saved credentials, at a time across processes): an exclusive file lock
// on a lock file beside the config, which is never removed. The system
// releases the lock of a holder that dies, so there is no stale lock to
// break, and no two waiters ever hold it together.
func lockConfig(ctx context.Context, wait time.Duration) (unlock func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	path, err := configPath()
	if err != nil {
		return nil, err
	}
	if _, err := configDir(path); err != nil {
		return nil, err
	}
	lock := path + ".lock"
	f, err := os.OpenFile(lock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock the config: %w", err)
	}
	for {
		busy, err := tryLockFile(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock the config (%s): %w", lock, err)
		}
		if !busy {
			return func() { _ = unlockFile(f); f.Close() }, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another devgpu held the lock on %s for too long while renewing your single sign-on; try again, or end that devgpu", lock)
		case <-time.After(lockPoll):
		}
	}
}
