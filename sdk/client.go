package sdk

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Client talks to a devgpu control plane.
type Client struct {
	URL   *url.URL
	Token string
	HTTP  *http.Client
	// CAFile is the CA file TrustCAFile gave, for messages.
	CAFile string
	// Renew, when set, gives a new token after the server refused the
	// current one (401): a single sign-on credential that expired. The
	// request is then sent once more with the new token. Renew must not
	// use this client (it runs while the client's token is locked).
	Renew func(ctx context.Context) (string, error)

	tokenMu sync.Mutex // guards Token while Renew may change it
}

// bearer is the token to send.
func (c *Client) bearer() string {
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	return c.Token
}

// renewed reports whether a request refused with token used may be sent
// again: another request renewed the token meanwhile, or Renew gave a
// new one. Renew's error, when it fails, explains the refusal better
// than the server's 401 does.
func (c *Client) renewed(ctx context.Context, used string) (bool, error) {
	if c.Renew == nil {
		return false, nil
	}
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	if c.Token != used {
		return true, nil
	}
	token, err := c.Renew(ctx)
	if err != nil || token == "" || token == used {
		return false, err
	}
	c.Token = token
	return true, nil
}

// NewClient returns a client for the server at rawURL.
func NewClient(rawURL, token string) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(rawURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q is not an http(s) URL such as http://127.0.0.1:8470", rawURL)
	}
	return &Client{URL: u, Token: token, HTTP: &http.Client{}}, nil
}

// TrustCAFile makes the client verify the server's certificate against
// the PEM certificates in path only (like curl's --cacert): for a server
// whose certificate no public CA signed, such as `devgpu server --dev`'s.
// Shell tunnels use the same configuration.
func (c *Client) TrustCAFile(path string) error {
	pem, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the CA file: %w; give the PEM file of the CA that signed the server's certificate", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("CA file %s holds no PEM certificate; give the PEM file of the CA that signed the server's certificate", path)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if c.HTTP == nil {
		c.HTTP = &http.Client{}
	}
	c.HTTP.Transport = tr
	c.CAFile = path
	return nil
}

// ReachError explains err, a failure to send a request to the server with
// c.HTTP, naming the fix when its certificate could not be verified.
func (c *Client) ReachError(err error) error {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &host):
		return &untrustedError{fmt.Sprintf("the devgpu server at %s presented a certificate for another name (%v); use a URL whose host its certificate names", c.URL, err), err}
	case errors.As(err, &unknown), errors.As(err, &invalid), errors.As(err, &verify):
		trust := "the system's CAs"
		if c.CAFile != "" {
			trust = "CA file " + c.CAFile
		}
		return &untrustedError{fmt.Sprintf("the devgpu server at %s presented a certificate that %s do not vouch for (%v); give the CA file of its certificate with `devgpu login URL --ca-file FILE` or DEVGPU_CA_FILE", c.URL, trust, err), err}
	}
	return fmt.Errorf("cannot reach the devgpu server at %s (is `devgpu server` running?): %w", c.URL, err)
}

// untrustedError is a server certificate the client could not verify.
type untrustedError struct {
	msg string
	err error
}

func (e *untrustedError) Error() string { return e.msg }
func (e *untrustedError) Unwrap() error { return e.err }

// IsUntrusted reports whether err is about a server certificate the client
// could not verify.
func IsUntrusted(err error) bool {
	var u *untrustedError
	return errors.As(err, &u)
}

// Error is an API error: the HTTP status and the server's problem details.
type Error struct {
	Status  int
	Problem Problem
}

func (e *Error) Error() string {
	if e.Problem.Detail != "" {
		return e.Problem.Detail
	}
	return fmt.Sprintf("server answered %d %s", e.Status, http.StatusText(e.Status))
}

// IsStatus reports whether err is an API error with the status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("read %s %s response: %w", method, path, err)
	}
	return nil
}

// request sends a request and returns a successful response, or the
// server's problem as an *Error.
func (c *Client) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	for try := 0; ; try++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.URL.String()+path, rd)
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		token := c.bearer()
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, c.ReachError(err)
		}
		if resp.StatusCode == http.StatusUnauthorized && try == 0 {
			again, err := c.renewed(ctx, token)
			if again || err != nil {
				resp.Body.Close()
			}
			if err != nil {
				return nil, err
			}
			if again {
				continue
			}
		}
		if resp.StatusCode >= 300 {
			defer resp.Body.Close()
			return nil, readError(resp)
		}
		return resp, nil
	}
}

func readError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if json.Unmarshal(b, &e.Problem) != nil || e.Problem.Detail == "" {
		e.Problem = Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode), Detail: strings.TrimSpace(string(b))}
	}
	return e
}

// Whoami returns the caller.
func (c *Client) Whoami(ctx context.Context) (Whoami, error) {
	var w Whoami
	return w, c.do(ctx, http.MethodGet, "/api/v1/whoami", nil, &w)
}

// CreateSession admits and starts a session (or, under the shared and
// spillover shell modes, finds one of the caller's to join) and returns it
// running. With req.Wait it may queue first; progress, when not nil, hears
// each change of queue position and reason. A request that queued and is
// given up (ctx is done) removes its queued session before returning; one
// whose stream breaks (the server restarted) returns a *WaitInterrupted
// that names the queued session to wait on with WaitSession.
func (c *Client) CreateSession(ctx context.Context, req CreateSessionRequest, progress func(SessionEvent)) (Session, error) {
	var s Session
	if req.Wait <= 0 && !req.Progress {
		return s, c.do(ctx, http.MethodPost, "/api/v1/sessions", req, &s)
	}
	resp, err := c.request(ctx, http.MethodPost, "/api/v1/sessions", req)
	if err != nil {
		return s, err
	}
	return c.readWait(ctx, resp, "", progress)
}

// WaitSession waits on a queued session (from a SessionEvent's ID) until
// it runs, as CreateSession does after queueing: a client whose wait was
// cut reconnects with it and keeps its place.
func (c *Client) WaitSession(ctx context.Context, id string, progress func(SessionEvent)) (Session, error) {
	resp, err := c.request(ctx, http.MethodGet, "/api/v1/sessions/"+url.PathEscape(id)+"/wait", nil)
	if err != nil {
		var e *Error
		switch {
		case ctx.Err() != nil:
			// Given up while reaching the server: as in readWait.
			c.GiveUp(id)
			return Session{}, ctx.Err()
		case !errors.As(err, &e):
			// Not an answer of the server's: it may be restarting.
			return Session{}, &WaitInterrupted{SessionID: id, Err: err}
		}
		return Session{}, err
	}
	return c.readWait(ctx, resp, id, progress)
}

// WaitInterrupted is the error of a wait whose stream broke before the
// server answered; the queued session SessionID keeps its place.
type WaitInterrupted struct {
	SessionID string
	Err       error
}

func (e *WaitInterrupted) Error() string {
	return fmt.Sprintf("the wait for queued session %s was cut: %v", e.SessionID, e.Err)
}

func (e *WaitInterrupted) Unwrap() error { return e.Err }

// readWait reads a stream of SessionEvents to its answer.
func (c *Client) readWait(ctx context.Context, resp *http.Response, id string, progress func(SessionEvent)) (Session, error) {
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev SessionEvent
		if err := dec.Decode(&ev); err != nil {
			switch {
			case id != "" && ctx.Err() != nil:
				c.GiveUp(id)
				return Session{}, ctx.Err()
			case id != "":
				return Session{}, &WaitInterrupted{SessionID: id, Err: err}
			}
			return Session{}, fmt.Errorf("the server ended the wait without an answer: %w", err)
		}
		if ev.ID != "" {
			id = ev.ID
		}
		switch {
		case ev.Problem != nil:
			return Session{}, &Error{Status: ev.Problem.Status, Problem: *ev.Problem}
		case ev.Session != nil:
			return *ev.Session, nil
		case progress != nil:
			progress(ev)
		}
	}
}

// giveUpTimeout bounds how long a request that is given up tries to remove
// its queued session.
const giveUpTimeout = 5 * time.Second

// GiveUp removes the queued session of a request given up, whatever ctx
// the request had. Should the server not hear it, the session gives up by
// itself when its client has been gone for the detach grace.
func (c *Client) GiveUp(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), giveUpTimeout)
	defer cancel()
	_, _ = c.StopSession(ctx, id)
}

// Session returns one session.
func (c *Client) Session(ctx context.Context, id string) (Session, error) {
	var s Session
	return s, c.do(ctx, http.MethodGet, "/api/v1/sessions/"+url.PathEscape(id), nil, &s)
}

// ListSessions returns the caller's sessions, or everyone's with all.
func (c *Client) ListSessions(ctx context.Context, all bool) ([]Session, error) {
	return c.Sessions(ctx, SessionQuery{AllUsers: all})
}

// StopSession ends a session and returns its final record.
func (c *Client) StopSession(ctx context.Context, id string) (Session, error) {
	return c.StopSessionWithReason(ctx, id, "")
}

// MaxStopReason is the most characters a stop's reason may have.
const MaxStopReason = 200

// StopSessionWithReason ends a session, saying why (up to MaxStopReason
// characters; empty: no reason): the audit log records it and the
// session's open shells are told. It returns the session's final record.
func (c *Client) StopSessionWithReason(ctx context.Context, id, reason string) (Session, error) {
	var s Session
	path := "/api/v1/sessions/" + url.PathEscape(id)
	if reason != "" {
		path += "?" + url.Values{"reason": {reason}}.Encode()
	}
	return s, c.do(ctx, http.MethodDelete, path, nil, &s)
}

// AttachmentHeader carries, on the connect response, the attachment's
// random id for WaitDetached.
const AttachmentHeader = "Devgpu-Attachment"

// Connect opens a tunnel to the session's agent.
func (c *Client) Connect(ctx context.Context, id string) (*Tunnel, error) {
	u := *c.URL
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	u.Path += "/api/v1/sessions/" + url.PathEscape(id) + "/connect"
	dial := func() (*websocket.Conn, *http.Response, string, error) {
		token := c.bearer()
		ws, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
			HTTPClient:      c.HTTP,
			HTTPHeader:      http.Header{"Authorization": {"Bearer " + token}},
			CompressionMode: websocket.CompressionDisabled,
		})
		return ws, resp, token, err
	}
	ws, resp, token, err := dial()
	if err != nil && resp != nil && resp.StatusCode == http.StatusUnauthorized {
		again, rerr := c.renewed(ctx, token)
		if rerr != nil {
			return nil, rerr
		}
		if again {
			ws, resp, _, err = dial()
		}
	}
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			return nil, readError(resp)
		}
		if ctx.Err() == nil && resp == nil {
			err = c.ReachError(err)
		}
		return nil, fmt.Errorf("connect to session %s: %w", id, err)
	}
	// The stream lives until it is closed, not until ctx ends.
	return newTunnel(ws, id, resp.Header.Get(AttachmentHeader)), nil
}

// CloseTunnel ends a shell on purpose (Tunnel.Leave): when it returns
// nil the server has recorded the end, and when this was the session's
// last shell, the session has ended and its GPU is free. close then closes
// what runs over the tunnel (an SSH client, say), or the tunnel itself
// when nil.
func (c *Client) CloseTunnel(ctx context.Context, t *Tunnel, close func() error) error {
	err := t.Leave(ctx)
	if close == nil {
		close = t.Close
	}
	return errors.Join(err, close())
}

// WaitDetached waits until the server has processed the tunnel's close,
// including the session's end when it was the last shell, and returns the
// session as it is then.
func (c *Client) WaitDetached(ctx context.Context, t *Tunnel) (Session, error) {
	var s Session
	path := "/api/v1/sessions/" + url.PathEscape(t.SessionID) + "?detached=" + url.QueryEscape(t.Attachment)
	return s, c.do(ctx, http.MethodGet, path, nil, &s)
}

// Projects lists the projects the caller can see.
func (c *Client) Projects(ctx context.Context) ([]Project, error) {
	var p []Project
	return p, c.do(ctx, http.MethodGet, "/api/v1/projects", nil, &p)
}

// Project returns one project.
func (c *Client) Project(ctx context.Context, name string) (Project, error) {
	var p Project
	return p, c.do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(name), nil, &p)
}

// CreateProject creates a project.
func (c *Client) CreateProject(ctx context.Context, req ProjectCreate) (Project, error) {
	var p Project
	return p, c.do(ctx, http.MethodPost, "/api/v1/projects", req, &p)
}

// UpdateProject changes a project's settings.
func (c *Client) UpdateProject(ctx context.Context, name string, req ProjectUpdate) (Project, error) {
	var p Project
	return p, c.do(ctx, http.MethodPatch, "/api/v1/projects/"+url.PathEscape(name), req, &p)
}

// DeleteProject deletes a project without active sessions.
func (c *Client) DeleteProject(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/projects/"+url.PathEscape(name), nil, nil)
}

// GPUs lists GPU pools with their free and total counts.
func (c *Client) GPUs(ctx context.Context) ([]GPUPool, error) {
	var g []GPUPool
	return g, c.do(ctx, http.MethodGet, "/api/v1/gpus", nil, &g)
}
