package sso_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/internal/testutil/oidcop"
)

// counting is a transport that counts the requests for each path, and
// fails those for the paths in down without asking the provider (as a
// provider that does not answer).
type counting struct {
	next http.RoundTripper

	mu     sync.Mutex
	count  map[string]int
	down   map[string]bool
	status map[string]int
}

func newCounting() *counting {
	return &counting{next: http.DefaultTransport, count: map[string]int{}, down: map[string]bool{}, status: map[string]int{}}
}

func (c *counting) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.count[r.URL.Path]++
	down, status := c.down[r.URL.Path], c.status[r.URL.Path]
	c.mu.Unlock()
	if down {
		return nil, errors.New("connection refused (test)")
	}
	if status != 0 {
		return &http.Response{
			StatusCode: status, Status: http.StatusText(status), Request: r,
			Header: http.Header{"Content-Type": {"text/plain"}},
			Body:   io.NopCloser(strings.NewReader("try later")),
		}, nil
	}
	return c.next.RoundTrip(r)
}

func (c *counting) requests(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count[path]
}

func (c *counting) setDown(path string, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down[path] = down
}

// clock is now plus an offset the test moves forward.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

const discoveryPath = "/.well-known/openid-configuration"

// inParallel runs f n times at once and waits for them all.
func inParallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

func TestFailedDiscoveryIsRemembered(t *testing.T) {
	t.Parallel()
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	tr := newCounting()
	var clk clock
	p := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: tr, Timeout: testutil.WaitShort}}, clk.now)
	toks := login(t, ctx, op, oidcop.CLIClientID)

	// A flood of logins while the provider is down asks it once.
	tr.setDown(discoveryPath, true)
	const n = 20
	errs := make([]error, n)
	inParallel(n, func(i int) { _, errs[i] = p.Verify(ctx, toks.IDToken, toks.Nonce) })
	for _, err := range errs {
		wantErr(t, err, true, false, "the identity provider at "+op.Issuer+" cannot be reached", "devgpu asks the provider again after")
		if err.Error() != errs[0].Error() {
			t.Errorf("errors differ: %q and %q", err, errs[0])
		}
	}
	if got := tr.requests(discoveryPath); got != 1 {
		t.Fatalf("%d logins while the provider is down made %d discovery requests; want 1", n, got)
	}
	// Refresh and Endpoint answer the remembered failure too.
	if _, _, err := p.Refresh(ctx, toks.RefreshToken); !sso.IsUnreachable(err) {
		t.Fatalf("Refresh while discovery failed = %v; want unreachable", err)
	}
	if _, err := p.Endpoint(ctx); !sso.IsUnreachable(err) {
		t.Fatalf("Endpoint while discovery failed = %v; want unreachable", err)
	}
	if got := tr.requests(discoveryPath); got != 1 {
		t.Fatalf("discovery requests = %d; want still 1", got)
	}

	// The provider is back, but the failure is remembered for 30s.
	tr.setDown(discoveryPath, false)
	clk.advance(29 * time.Second)
	if _, err := p.Verify(ctx, toks.IDToken, toks.Nonce); !sso.IsUnreachable(err) {
		t.Fatalf("Verify 29s after the failure = %v; want the remembered failure", err)
	}
	// Then asked again, once; the success is kept.
	clk.advance(2 * time.Second)
	inParallel(n, func(i int) { _, errs[i] = p.Verify(ctx, toks.IDToken, toks.Nonce) })
	for _, err := range errs {
		if err != nil {
			t.Fatalf("Verify after 31s: %v", err)
		}
	}
	tr.setDown(discoveryPath, true)
	clk.advance(time.Hour)
	if _, err := p.Endpoint(ctx); err != nil {
		t.Fatalf("Endpoint after discovery succeeded: %v", err)
	}
	if got := tr.requests(discoveryPath); got != 2 {
		t.Fatalf("discovery requests = %d; want 2", got)
	}
}

func TestDiscoveryNotRememberedWhenTheCallerGivesUp(t *testing.T) {
	t.Parallel()
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	tr := newCounting()
	p := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: tr, Timeout: testutil.WaitShort}}, nil)
	toks := login(t, ctx, op, oidcop.CLIClientID)
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.Verify(gone, toks.IDToken, toks.Nonce); err == nil {
		t.Fatal("Verify with an ended context succeeded")
	}
	if _, err := p.Verify(ctx, toks.IDToken, toks.Nonce); err != nil {
		t.Fatalf("Verify after a caller gave up: %v", err)
	}
}

// withKid is raw with its header's kid replaced (the signature no longer
// matches, which does not matter: a key id the provider does not hold
// makes the keys be fetched before any signature is checked).
func withKid(t *testing.T, raw, kid string) string {
	t.Helper()
	s := segments(t, raw)
	hdr, err := base64.RawURLEncoding.DecodeString(s[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	h["kid"] = kid
	hb, _ := json.Marshal(h)
	return base64.RawURLEncoding.EncodeToString(hb) + "." + s[1] + "." + s[2]
}

// jwksPath is the path of op's jwks_uri.
func jwksPath(t *testing.T, op *oidcop.OP) string {
	t.Helper()
	resp, err := http.Get(op.Issuer + discoveryPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var meta struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&meta); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(meta.JWKSURI)
	if err != nil || u.Path == "" {
		t.Fatalf("jwks_uri %q: %v", meta.JWKSURI, err)
	}
	return u.Path
}

func TestUnknownKeyIDsFetchKeysAtMostEvery30s(t *testing.T) {
	t.Parallel()
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	keys := jwksPath(t, op)
	tr := newCounting()
	var clk clock
	p := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: tr, Timeout: testutil.WaitShort}}, clk.now)
	good := sign(t, op, nil)
	wantKeyFetches := func(want int) {
		t.Helper()
		if got := tr.requests(keys); got != want {
			t.Fatalf("%d requests for the provider's keys; want %d", got, want)
		}
	}

	// The first token fetches the keys.
	if _, err := p.Verify(ctx, good, ""); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	wantKeyFetches(1)

	// A flood of tokens with key ids the provider does not hold fetches
	// the keys once (the provider may have rotated them), then not for
	// 30 seconds.
	const n = 25
	errs := make([]error, n)
	inParallel(n, func(i int) {
		_, errs[i] = p.Verify(ctx, withKid(t, good, "made-up-"+strings.Repeat("k", i)), "")
	})
	for _, err := range errs {
		wantErr(t, err, false, false, "signature does not verify against the provider's keys", "comes from another provider", "is not among the provider's keys")
	}
	wantKeyFetches(2)
	_, err := p.Verify(ctx, withKid(t, good, "one-more"), "")
	wantErr(t, err, false, false, "comes from another provider", "devgpu fetches them again after")
	wantKeyFetches(2)

	// A bad signature under a key id the provider holds fetches nothing.
	s := segments(t, good)
	forged := sign(t, op, map[string]any{"groups": []string{"root"}})
	_, err = p.Verify(ctx, s[0]+"."+segments(t, forged)[1]+"."+s[2], "")
	wantErr(t, err, false, false, "signature does not verify", "does not verify with the provider's key")
	wantKeyFetches(2)

	// Good tokens verify meanwhile, with the keys held.
	if _, err := p.Verify(ctx, good, ""); err != nil {
		t.Fatalf("Verify during the cooldown: %v", err)
	}

	// 30 seconds later: one more fetch for the next flood.
	clk.advance(31 * time.Second)
	inParallel(n, func(i int) { _, errs[i] = p.Verify(ctx, withKid(t, good, "later-"+strings.Repeat("k", i)), "") })
	for _, err := range errs {
		wantErr(t, err, false, false, "comes from another provider")
	}
	wantKeyFetches(3)

	// The keys cannot be fetched: unreachable, and the failure is
	// answered for 30 seconds without asking again.
	clk.advance(31 * time.Second)
	tr.setDown(keys, true)
	inParallel(n, func(i int) { _, errs[i] = p.Verify(ctx, withKid(t, good, "down-"+strings.Repeat("k", i)), "") })
	for _, err := range errs {
		wantErr(t, err, true, false, "signing keys", "cannot be fetched")
	}
	wantKeyFetches(4)
	if _, err := p.Verify(ctx, good, ""); err != nil {
		t.Fatalf("Verify of a token with a held key while the keys cannot be fetched: %v", err)
	}
	clk.advance(31 * time.Second)
	tr.setDown(keys, false)
	_, err = p.Verify(ctx, withKid(t, good, "back"), "")
	wantErr(t, err, false, false, "comes from another provider", `"back" is not among the provider's keys`)
	wantKeyFetches(5)
}

// A provider never asked for its keys that cannot give them: the
// failure is remembered too.
func TestFirstKeyFetchFailureIsRemembered(t *testing.T) {
	t.Parallel()
	op, _, ctx := setup(t, oidcop.Options{}, nil)
	keys := jwksPath(t, op)
	tr := newCounting()
	tr.setDown(keys, true)
	var clk clock
	p := newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: tr, Timeout: testutil.WaitShort}}, clk.now)
	good := sign(t, op, nil)
	for range 5 {
		_, err := p.Verify(ctx, good, "")
		wantErr(t, err, true, false, "signing keys", "cannot be fetched")
	}
	if got := tr.requests(keys); got != 1 {
		t.Fatalf("%d requests for the keys; want 1", got)
	}
	tr.setDown(keys, false)
	clk.advance(31 * time.Second)
	if _, err := p.Verify(ctx, good, ""); err != nil {
		t.Fatalf("Verify once the keys can be fetched: %v", err)
	}

	// A provider that answers an error for its keys is unreachable too,
	// not a sign of a tampered token.
	tr = newCounting()
	tr.status[keys] = http.StatusServiceUnavailable
	p = newProvider(t, op, sso.Config{HTTPClient: &http.Client{Transport: tr, Timeout: testutil.WaitShort}}, nil)
	_, err := p.Verify(ctx, good, "")
	wantErr(t, err, true, false, "signing keys", "cannot be fetched", "Service Unavailable")
}
