package oidcop

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
)

// Browse follows an authorization URL (built by someone else, e.g. the
// CLI) through the login form as the person, and returns the final
// redirect to the client's redirect_uri without fetching it. A login the
// provider refuses (wrong password, disabled person) is an error naming
// the provider's message; an error the provider sends back to the client
// (error=... on the redirect) is returned as the redirect, for the
// caller to read. To hand the code to a CLI listening on that redirect,
// fetch the URL (http.Get) as a browser would.
func (p *OP) Browse(ctx context.Context, authURL, user, password string) (*url.URL, error) {
	au, err := url.Parse(authURL)
	if err != nil {
		return nil, fmt.Errorf("oidcop: parse the authorization URL: %w", err)
	}
	redirect, err := url.Parse(au.Query().Get("redirect_uri"))
	if err != nil || redirect.Host == "" {
		return nil, fmt.Errorf("oidcop: the authorization URL has no usable redirect_uri: %q", au.Query().Get("redirect_uri"))
	}
	b := newBrowser(redirect)
	pg, err := b.do(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, err
	}
	if pg.final != nil {
		return pg.final, nil
	}
	f, ok := pg.form()
	if !ok || !f.has("username") {
		return nil, fmt.Errorf("oidcop: expected the login form at %s, got %d: %s", pg.url, pg.status, trimBody(pg.body))
	}
	f.values.Set("username", user)
	f.values.Set("password", password)
	pg, err = b.do(ctx, http.MethodPost, f.action, f.values)
	if err != nil {
		return nil, err
	}
	if pg.final != nil {
		return pg.final, nil
	}
	if msg := pg.errorText(); msg != "" {
		return nil, fmt.Errorf("oidcop: the provider refused the login of %s: %s", user, msg)
	}
	return nil, fmt.Errorf("oidcop: the login did not come back to %s; the provider answered %d at %s: %s", redirect, pg.status, pg.url, trimBody(pg.body))
}

// ApproveDevice enters a device flow's user code on the provider's
// device page and approves it as the person.
func (p *OP) ApproveDevice(ctx context.Context, userCode, user, password string) error {
	return p.answerDevice(ctx, userCode, user, password, "allowed")
}

// DenyDevice enters a device flow's user code on the provider's device
// page and denies it as the person (the client's poll answers
// access_denied).
func (p *OP) DenyDevice(ctx context.Context, userCode, user, password string) error {
	return p.answerDevice(ctx, userCode, user, password, "denied")
}

func (p *OP) answerDevice(ctx context.Context, userCode, user, password, action string) error {
	b := newBrowser(nil)
	// The code entry form posts back to the device page, which answers
	// the sign-in form; a person following verification_uri_complete
	// gets that form at once.
	pg, err := b.do(ctx, http.MethodPost, p.Issuer+DevicePath, url.Values{"user_code": {userCode}})
	if err != nil {
		return err
	}
	f, ok := pg.form()
	if !ok || !f.has("username") {
		return fmt.Errorf("oidcop: expected the device sign-in form, got %d at %s: %s", pg.status, pg.url, trimBody(pg.body))
	}
	f.values.Set("username", user)
	f.values.Set("password", password)
	pg, err = b.do(ctx, http.MethodPost, f.action, f.values)
	if err != nil {
		return err
	}
	// Success is the confirmation page (with a cookie naming the code);
	// a refusal redirects to the code page with the reason.
	m := confirmRe.FindSubmatch(pg.body)
	if m == nil {
		if msg := pg.errorText(); msg != "" {
			return fmt.Errorf("oidcop: the provider refused the device sign-in of %s: %s", user, msg)
		}
		return fmt.Errorf("oidcop: expected the device confirmation page, got %d at %s: %s", pg.status, pg.url, trimBody(pg.body))
	}
	confirm, err := pg.url.Parse(html.UnescapeString(string(m[1])))
	if err != nil {
		return fmt.Errorf("oidcop: the confirmation link: %w", err)
	}
	q := confirm.Query()
	q.Set("action", action)
	confirm.RawQuery = q.Encode()
	pg, err = b.do(ctx, http.MethodGet, confirm.String(), nil)
	if err != nil {
		return err
	}
	if pg.status != http.StatusOK || !strings.Contains(string(pg.body), "Device authorization "+action) {
		if msg := pg.errorText(); msg != "" {
			return fmt.Errorf("oidcop: the provider refused the device confirmation: %s", msg)
		}
		return fmt.Errorf("oidcop: the device confirmation answered %d at %s: %s", pg.status, pg.url, trimBody(pg.body))
	}
	return nil
}

// browser is an HTTP client with cookies that follows the provider's
// redirects and stops at the first one to the client's redirect URI.
type browser struct {
	c        *http.Client
	redirect *url.URL
}

func newBrowser(redirect *url.URL) *browser {
	jar, _ := cookiejar.New(nil)
	b := &browser{redirect: redirect}
	b.c = &http.Client{
		Jar: jar,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if b.isRedirect(req.URL) {
				return http.ErrUseLastResponse
			}
			if len(via) >= 10 {
				return errors.New("oidcop: more than 10 redirects")
			}
			return nil
		},
	}
	return b
}

func (b *browser) isRedirect(u *url.URL) bool {
	return b.redirect != nil && u.Scheme == b.redirect.Scheme && u.Host == b.redirect.Host && u.Path == b.redirect.Path
}

// page is what a request ended at: a page of the provider, or final, the
// redirect to the client's redirect URI.
type page struct {
	url    *url.URL
	status int
	body   []byte
	final  *url.URL
}

func (b *browser) do(ctx context.Context, method, target string, form url.Values) (*page, error) {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return nil, fmt.Errorf("oidcop: %w", err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("oidcop: %s %s: %w", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("oidcop: read %s: %w", resp.Request.URL, err)
	}
	pg := &page{url: resp.Request.URL, status: resp.StatusCode, body: data}
	if loc, err := resp.Location(); err == nil && b.isRedirect(loc) {
		pg.final = loc
	}
	return pg, nil
}

var (
	formRe    = regexp.MustCompile(`(?is)<form\b([^>]*)>(.*?)</form>`)
	actionRe  = regexp.MustCompile(`(?i)\baction="([^"]*)"`)
	inputRe   = regexp.MustCompile(`(?i)<input\b[^>]*>`)
	nameRe    = regexp.MustCompile(`(?i)\bname="([^"]*)"`)
	valueRe   = regexp.MustCompile(`(?i)\bvalue="([^"]*)"`)
	errorRe   = regexp.MustCompile(`(?is)<p style="color:red[^"]*">(.*?)</p>`)
	confirmRe = regexp.MustCompile(`location\.href='([^']*confirm\?action=allowed)'`)
)

// form is the first form of a page: where it posts and its fields with
// their values.
type form struct {
	action string
	values url.Values
	names  []string
}

func (f form) has(name string) bool {
	for _, n := range f.names {
		if n == name {
			return true
		}
	}
	return false
}

func (pg *page) form() (form, bool) {
	m := formRe.FindSubmatch(pg.body)
	if m == nil {
		return form{}, false
	}
	f := form{action: pg.url.String(), values: url.Values{}}
	if a := actionRe.FindSubmatch(m[1]); a != nil {
		u, err := pg.url.Parse(html.UnescapeString(string(a[1])))
		if err != nil {
			return form{}, false
		}
		f.action = u.String()
	}
	for _, in := range inputRe.FindAll(m[2], -1) {
		n := nameRe.FindSubmatch(in)
		if n == nil {
			continue
		}
		name := html.UnescapeString(string(n[1]))
		f.names = append(f.names, name)
		if v := valueRe.FindSubmatch(in); v != nil {
			f.values.Set(name, html.UnescapeString(string(v[1])))
		}
	}
	return f, true
}

// errorText is the message the provider's pages show in red ("" when
// none).
func (pg *page) errorText() string {
	m := errorRe.FindSubmatch(pg.body)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(html.UnescapeString(string(m[1])))
}
