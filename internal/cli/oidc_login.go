package cli

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/devgpu/devgpu/sdk"
)

// browserLoginTimeout is how long the browser flow waits for the
// provider to send the browser back.
const browserLoginTimeout = 5 * time.Minute

// oidcLogin runs a login flow against the identity provider itself, as a
// public client: the authorization code flow with PKCE on a loopback
// redirect (a browser), or the device authorization grant (RFC 8628).
type oidcLogin struct {
	provider sdk.OIDCProvider
	// http reaches the provider.
	http *http.Client
	// stderr hears the URL to open or the code to enter.
	stderr io.Writer
	// device asks for the device grant; noBrowser prints the URL without
	// trying to open a browser (and keeps the browser flow over SSH).
	device, noBrowser bool
	// open opens a URL in a browser (openBrowser).
	open func(string) error
	// getenv reads the environment (os.Getenv).
	getenv  func(string) string
	timeout time.Duration
	// loopbackHost overrides the redirect URI's host (loopbackHost).
	loopbackHost string
}

// run logs in and returns the provider's tokens for the server.
func (l *oidcLogin) run(ctx context.Context) (sdk.OIDCLogin, error) {
	if err := checkProviderURL("the identity provider's issuer", l.provider.Issuer); err != nil {
		return sdk.OIDCLogin{}, err
	}
	ctx = oidc.ClientContext(ctx, l.http)
	p, err := l.discover(ctx)
	if err != nil {
		return sdk.OIDCLogin{}, err
	}
	// A public client: its id goes in the form, with no secret.
	endpoint := p.Endpoint()
	for _, e := range []struct{ what, url string }{
		{"authorization endpoint", endpoint.AuthURL}, {"token endpoint", endpoint.TokenURL},
		{"device authorization endpoint", endpoint.DeviceAuthURL},
	} {
		if e.url == "" {
			continue
		}
		if err := checkProviderURL("the identity provider's "+e.what, e.url); err != nil {
			return sdk.OIDCLogin{}, err
		}
	}
	endpoint.AuthStyle = oauth2.AuthStyleInParams
	cfg := oauth2.Config{ClientID: l.provider.ClientID, Endpoint: endpoint, Scopes: l.provider.Scopes}
	if l.device {
		return l.deviceFlow(ctx, cfg)
	}
	if !l.noBrowser && sshWithoutDisplay(l.getenv) {
		fmt.Fprintln(l.stderr, "This is an SSH session without a display, so a browser here could not finish the login; using a code to enter on another device instead (--device).")
		return l.deviceFlow(ctx, cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(l.stderr, "Cannot listen on 127.0.0.1 for the browser to come back to (%v); using a code to enter on another device instead (--device).\n", err)
		return l.deviceFlow(ctx, cfg)
	}
	host := l.loopbackHost
	if host == "" {
		host = loopbackHost(l.provider.Issuer)
	}
	return l.browserFlow(ctx, cfg, ln, host)
}

// loopbackHost is the host of the browser flow's redirect URI:
// 127.0.0.1 (RFC 8252, section 7.3), but localhost for Microsoft Entra
// ID, which accepts any port on a registered loopback redirect URI only
// when its host is localhost.
func loopbackHost(issuer string) string {
	u, err := url.Parse(issuer)
	if err == nil {
		switch h := strings.ToLower(u.Hostname()); {
		case h == "login.microsoftonline.com", strings.HasPrefix(h, "login.microsoftonline."),
			h == "login.partner.microsoftonline.cn", h == "sts.windows.net":
			return "localhost"
		}
	}
	return "127.0.0.1"
}

// discover reads the provider's discovery document.
func (l *oidcLogin) discover(ctx context.Context) (*oidc.Provider, error) {
	p, err := oidc.NewProvider(ctx, l.provider.Issuer)
	if err == nil {
		return p, nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return nil, fmt.Errorf("the identity provider at %s cannot be reached (%v); check your network or VPN", l.provider.Issuer, ue.Err)
	}
	return nil, fmt.Errorf("the identity provider at %s gave no usable discovery document (%v); ask your devgpu administrator to check the server's oidc.issuer", l.provider.Issuer, err)
}

// sshWithoutDisplay: a loopback redirect cannot work, since the browser
// would run on another machine than this listener.
func sshWithoutDisplay(getenv func(string) string) bool {
	return runtime.GOOS == "linux" && (getenv("SSH_CONNECTION") != "" || getenv("SSH_TTY") != "") &&
		getenv("DISPLAY") == "" && getenv("WAYLAND_DISPLAY") == ""
}

// callbackResult is what the loopback listener heard.
type callbackResult struct {
	tok *oauth2.Token
	err error
}

func (l *oidcLogin) browserFlow(ctx context.Context, cfg oauth2.Config, ln net.Listener, host string) (sdk.OIDCLogin, error) {
	port := ln.Addr().(*net.TCPAddr).Port
	cfg.RedirectURL = fmt.Sprintf("http://%s/callback", net.JoinHostPort(host, strconv.Itoa(port)))
	listeners := []net.Listener{ln}
	if host == "localhost" {
		// A browser may try localhost's IPv6 address first.
		if ln6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
			listeners = append(listeners, ln6)
		}
	}
	verifier, state, nonce := oauth2.GenerateVerifier(), randomString(), randomString()
	authURL := cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", nonce))

	results := make(chan callbackResult, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("state") != state {
			// Not this login's answer (an old tab): keep waiting.
			callbackPage(w, http.StatusBadRequest, "This page does not belong to the devgpu login in progress; use the link the terminal shows.")
			return
		}
		if e := q.Get("error"); e != "" {
			msg := e
			if d := q.Get("error_description"); d != "" {
				msg = d + " (" + e + ")"
			}
			err := fmt.Errorf("the identity provider refused the login: %s; ask your administrator whether you may use devgpu, then run `devgpu login` again", strings.TrimSuffix(msg, "."))
			callbackPage(w, http.StatusForbidden, "devgpu login failed: "+msg)
			send(results, callbackResult{err: err})
			return
		}
		tok, err := cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
		if err != nil {
			err = providerError(l.provider.Issuer, "redeem the login code", err)
			callbackPage(w, http.StatusBadGateway, "devgpu login failed: "+err.Error())
			send(results, callbackResult{err: err})
			return
		}
		callbackPage(w, http.StatusOK, "You are logged in to devgpu; you can close this tab.")
		send(results, callbackResult{tok: tok})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var served sync.WaitGroup
	for _, ln := range listeners {
		served.Add(1)
		go func() { defer served.Done(); _ = srv.Serve(ln) }()
	}
	defer func() {
		// The page is written before the result is sent: let it finish.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		served.Wait()
	}()

	if l.noBrowser {
		fmt.Fprintf(l.stderr, "To log in, open this URL in a browser on this machine:\n  %s\n", authURL)
	} else {
		fmt.Fprintf(l.stderr, "Opening your browser to log in; if it does not open, visit:\n  %s\n", authURL)
		if err := l.open(authURL); err != nil {
			fmt.Fprintf(l.stderr, "(could not open a browser: %v)\n", err)
		}
	}
	timeout := l.timeout
	if timeout <= 0 {
		timeout = browserLoginTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var res callbackResult
	select {
	case res = <-results:
	case <-ctx.Done():
		return sdk.OIDCLogin{}, ctx.Err()
	case <-timer.C:
		return sdk.OIDCLogin{}, fmt.Errorf("the browser did not come back from the identity provider within %s; run `devgpu login` again, or use --device to log in with a code on another device", timeout)
	}
	if res.err != nil {
		return sdk.OIDCLogin{}, res.err
	}
	return tokensFor(res.tok, nonce, sdk.FlowBrowser, l.provider.Issuer)
}

func send(ch chan callbackResult, r callbackResult) {
	select {
	case ch <- r:
	default: // an answer is already in
	}
}

// callbackPage is the small page the browser shows at the end.
func callbackPage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><html><head><title>devgpu</title></head><body><p>%s</p></body></html>\n", html.EscapeString(msg))
}

func (l *oidcLogin) deviceFlow(ctx context.Context, cfg oauth2.Config) (sdk.OIDCLogin, error) {
	if cfg.Endpoint.DeviceAuthURL == "" {
		return sdk.OIDCLogin{}, fmt.Errorf("the identity provider at %s does not offer the device authorization grant; log in on a machine with a browser (without --device)", l.provider.Issuer)
	}
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		return sdk.OIDCLogin{}, providerError(l.provider.Issuer, "start a device login", err)
	}
	if err := checkProviderURL("the identity provider's device verification URI", da.VerificationURI); err != nil {
		return sdk.OIDCLogin{}, err
	}
	if err := checkProviderURL("the identity provider's device verification URI", da.VerificationURIComplete); da.VerificationURIComplete != "" && err != nil {
		return sdk.OIDCLogin{}, err
	}
	fmt.Fprintf(l.stderr, "To log in, open %s and enter the code %s\n", da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(l.stderr, "  (or open %s)\n", da.VerificationURIComplete)
	}
	tok, err := cfg.DeviceAccessToken(ctx, da)
	if err != nil {
		var re *oauth2.RetrieveError
		switch {
		case errors.As(err, &re) && re.ErrorCode == "access_denied":
			return sdk.OIDCLogin{}, errors.New("the login was declined at the identity provider; run `devgpu login` again and approve it")
		case errors.As(err, &re) && re.ErrorCode == "expired_token",
			errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			return sdk.OIDCLogin{}, errors.New("the code expired before the login was approved; run `devgpu login --device` again and enter the new code sooner")
		case ctx.Err() != nil:
			return sdk.OIDCLogin{}, ctx.Err()
		}
		return sdk.OIDCLogin{}, providerError(l.provider.Issuer, "finish the device login", err)
	}
	return tokensFor(tok, "", sdk.FlowDevice, l.provider.Issuer)
}

// tokensFor is what the server is given.
func tokensFor(tok *oauth2.Token, nonce, flow, issuer string) (sdk.OIDCLogin, error) {
	id, _ := tok.Extra("id_token").(string)
	if id == "" {
		return sdk.OIDCLogin{}, fmt.Errorf("the identity provider at %s answered without an ID token; ask your devgpu administrator to include the openid scope", issuer)
	}
	// The provider's access token stays here: the server has no use for
	// it.
	return sdk.OIDCLogin{IDToken: id, RefreshToken: tok.RefreshToken, Nonce: nonce, Flow: flow}, nil
}

// providerError explains a failure of a request to the provider.
func providerError(issuer, action string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		msg := re.ErrorCode
		if re.ErrorDescription != "" {
			msg += ": " + re.ErrorDescription
		}
		if msg == "" {
			msg = fmt.Sprintf("HTTP %d", re.Response.StatusCode)
		}
		return fmt.Errorf("the identity provider at %s refused to %s (%s); ask your devgpu administrator to check the client registration", issuer, action, strings.TrimSuffix(msg, "."))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("the identity provider at %s cannot be reached (%v); check your network or VPN", issuer, ue.Err)
	}
	return fmt.Errorf("could not %s with the identity provider at %s: %w", action, issuer, err)
}

func randomString() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// secureURL: an https URL, or an http one to a loopback host (a provider
// or server on this machine, as in development and tests).
func secureURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return false
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return true
	case "http":
		return isLoopback(u.Hostname())
	}
	return false
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkProviderURL refuses a URL from the server or the provider that
// the CLI would send secrets to, open or print as a link, unless it is
// https (or http on loopback).
func checkProviderURL(what, raw string) error {
	if secureURL(raw) {
		return nil
	}
	return fmt.Errorf("%s %q is not an https URL, so devgpu will not use it for single sign-on; ask your devgpu administrator to fix the server's oidc.issuer or the provider's configuration", what, raw)
}

// checkSSOServerURL refuses single sign-on to a server reached without
// TLS: the provider's tokens and devgpu's credential would travel in the
// clear.
func checkSSOServerURL(u *url.URL) error {
	if secureURL(u.String()) {
		return nil
	}
	return fmt.Errorf("single sign-on needs an https server URL (or http on loopback); log in to https://%s", u.Host+strings.TrimSuffix(u.Path, "/"))
}

// openBrowser opens u in $BROWSER, else the system's browser.
func openBrowser(u string) error {
	argv, err := browserCommand(os.Getenv("BROWSER"), runtime.GOOS, u)
	if err != nil {
		return err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

// browserCommand is the command that opens u: the first entry of
// $BROWSER (browser), split into fields before "%s" in each is replaced
// by u (or u appended when none has it), so u is always one argument
// whatever it holds; else the system's opener. Only an https URL (or http
// on loopback) is opened.
func browserCommand(browser, goos, u string) ([]string, error) {
	if !secureURL(u) {
		return nil, fmt.Errorf("devgpu opens only https URLs (or http on loopback), not %q", u)
	}
	if b := strings.Split(browser, string(os.PathListSeparator))[0]; strings.TrimSpace(b) != "" {
		fields := strings.Fields(b)
		if strings.Contains(fields[0], "%s") {
			return nil, fmt.Errorf("$BROWSER %q puts the URL in place of the program; set it to a browser's command, such as \"firefox %%s\"", b)
		}
		argv := make([]string, 0, len(fields)+1)
		substituted := false
		for _, f := range fields {
			if strings.Contains(f, "%s") {
				f = strings.ReplaceAll(f, "%s", u)
				substituted = true
			}
			argv = append(argv, f)
		}
		if !substituted {
			argv = append(argv, u)
		}
		return argv, nil
	}
	switch goos {
	case "darwin":
		return []string{"open", u}, nil
	case "windows":
		return []string{"rundll32", "url.dll,FileProtocolHandler", u}, nil
	default:
		return []string{"xdg-open", u}, nil
	}
}
