package sso

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// retryAfter is how long a failed discovery is remembered, and how long
// after fetching the provider's keys again because of an unknown key id
// devgpu waits before it would fetch them once more: a flood of logins
// while the provider is down, or of tokens with made-up key ids, makes
// one request to the provider per 30 seconds, not one per token.
const retryAfter = 30 * time.Second

// keySet verifies ID-token signatures with the provider's keys (its
// jwks_uri). Unlike go-oidc's RemoteKeySet, which fetches the keys again
// for every token whose key id it does not hold (and for every token
// whose signature fails), it fetches them:
//   - when it holds none yet (the first token);
//   - for a token whose key id it does not hold (the provider rotated its
//     keys), at most once per retryAfter;
//   - after a failed fetch, not before retryAfter has passed (the
//     failure is answered meanwhile).
//
// A token whose key id it holds but whose signature does not verify is
// refused without a fetch.
type keySet struct {
	url    string
	client *http.Client
	now    func() time.Time

	mu       sync.Mutex
	keys     []jose.JSONWebKey
	gen      int       // counts the fetches that succeeded (0: no keys yet)
	fetched  time.Time // when keys were fetched
	next     time.Time // no fetch before this (zero: any time)
	err      error     // the last fetch's failure, until one succeeds
	inflight chan struct{}
}

// joseAlgs are the algorithms a token may be parsed with (go-oidc's
// verifier has already checked the token's against the provider's).
var joseAlgs = func() []jose.SignatureAlgorithm {
	var as []jose.SignatureAlgorithm
	for a := range signingAlgs {
		as = append(as, jose.SignatureAlgorithm(a))
	}
	return as
}()

// VerifySignature implements oidc.KeySet.
func (k *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSigned(raw, joseAlgs)
	if err != nil {
		return nil, fmt.Errorf("malformed JWT: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("the JWT carries %d signatures, not one", len(jws.Signatures))
	}
	kid := jws.Signatures[0].Header.KeyID

	k.mu.Lock()
	keys, gen := k.keys, k.gen
	k.mu.Unlock()
	if gen > 0 {
		payload, known := verifyWith(jws, keys, kid)
		if payload != nil {
			return payload, nil
		}
		if known {
			return nil, fmt.Errorf("the signature does not verify with the provider's key %q", kid)
		}
	}

	// No keys yet, or none with this key id: fetch them, unless keys
	// newer than those just tried have arrived (try those), another
	// verification is fetching them (wait for it), or the last fetch was
	// too recent.
	k.mu.Lock()
	for {
		if k.gen != gen {
			keys = k.keys
			k.mu.Unlock()
			return result(jws, keys, kid)
		}
		wait := k.inflight
		if wait == nil {
			break
		}
		k.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		k.mu.Lock()
	}
	if now := k.now(); now.Before(k.next) {
		err, fetched, next := k.err, k.fetched, k.next
		k.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("the key id %q is not among the provider's keys fetched at %s (devgpu fetches them again after %s)", kid, stamp(fetched), stamp(next))
	}
	done := make(chan struct{})
	k.inflight = done
	k.mu.Unlock()

	// The caller's cancellation does not end the fetch (its failure
	// would be remembered for every other caller); the timeout does.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpTimeout)
	keys, err = k.fetch(fctx)
	cancel()
	if err != nil {
		err = &keyFetchError{err}
	}

	k.mu.Lock()
	now := k.now()
	switch {
	case err != nil:
		k.err, k.next = err, now.Add(retryAfter)
	case k.gen == 0:
		// The first keys: a token with another key id may fetch again
		// at once (the provider may have rotated since).
		k.keys, k.gen, k.fetched, k.err = keys, 1, now, nil
	default:
		k.keys, k.gen, k.fetched, k.err = keys, k.gen+1, now, nil
		k.next = now.Add(retryAfter)
	}
	k.inflight = nil
	close(done)
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return result(jws, keys, kid)
}

// result verifies with keys fetched for (or during) this verification.
func result(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, error) {
	payload, known := verifyWith(jws, keys, kid)
	switch {
	case payload != nil:
		return payload, nil
	case known:
		return nil, fmt.Errorf("the signature does not verify with the provider's key %q", kid)
	case kid == "":
		return nil, errors.New("the token names no key id and verifies with none of the provider's keys")
	default:
		return nil, fmt.Errorf("the key id %q is not among the provider's keys", kid)
	}
}

// verifyWith verifies jws with the key kid names (every key when kid is
// empty). known reports whether keys hold kid.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) (payload []byte, known bool) {
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		known = kid != ""
		if p, err := jws.Verify(&keys[i]); err == nil {
			return p, true
		}
	}
	return nil, known
}

// fetch gets the provider's keys. Keys of algorithms or types devgpu
// cannot use are left out rather than refusing the whole set (as
// go-oidc does; RFC 7517 section 5).
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("bad jwks_uri: %v", err)
	}
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the keys answered %s: %s", resp.Status, body)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("the key set is not JSON: %v", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var meta struct {
			Alg string `json:"alg"`
		}
		if err := json.Unmarshal(raw, &meta); err != nil {
			return nil, fmt.Errorf("the key set holds a key that is not a JSON object: %v", err)
		}
		if meta.Alg != "" && !signingAlgs[meta.Alg] {
			continue
		}
		var key jose.JSONWebKey
		if err := json.Unmarshal(raw, &key); err != nil {
			if errors.Is(err, jose.ErrUnsupportedKeyType) {
				continue
			}
			return nil, fmt.Errorf("the key set holds a key that cannot be read: %v", err)
		}
		if !key.IsPublic() {
			continue
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// keyFetchError is a failure to fetch the provider's keys (not an answer
// about the token): the provider is unreachable, or answers no key set.
type keyFetchError struct{ err error }

func (e *keyFetchError) Error() string { return e.err.Error() }
func (e *keyFetchError) Unwrap() error { return e.err }
