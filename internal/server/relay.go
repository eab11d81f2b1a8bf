package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
)

// Several replicas share one store, and an agent in a cluster links to
// whichever replica its connection reached; the store records which
// (link.go). A replica that needs a stream to an agent linked elsewhere
// asks that replica for it at GET /api/v1/internal/relay/{session}: a
// WebSocket whose binary messages carry the stream's bytes both ways. The
// relaying replica dials its own link only, never another replica, so a
// stream crosses at most one relay; the asking replica presents the agent
// secret itself, so the relay carries bytes it need not understand. The
// same GET without an upgrade answers what the agent reported when it
// linked (its node and devices), for a start that waits for the agent.
//
// Only replicas may ask: the request carries HMAC-SHA256(agent key,
// "relay:"+session+":"+unix seconds) with those seconds in a header, and
// a token more than relaySkew away from the relaying replica's clock is
// refused. Every replica has the agent key already (it derives the agent
// secrets), so the relay needs no credential of its own.

// relayPath is the route's prefix; the session id follows.
const relayPath = "/api/v1/internal/relay/"

// relayTimeHeader carries the unix seconds the relay token was made at.
const relayTimeHeader = "X-Devgpu-Relay-Time"

const (
	// relaySkew bounds how old (or how far ahead) a relay token may be:
	// replicas' clocks must agree within it.
	relaySkew = 60 * time.Second
	// relayDialTimeout bounds the dial and handshake with another replica.
	relayDialTimeout = 10 * time.Second
)

// relayToken is the token a replica presents for a relay of the
// session's stream, made at unix seconds.
func relayToken(key []byte, sessionID string, unix int64) string {
	return agentSecret(key, "relay:"+sessionID+":"+strconv.FormatInt(unix, 10))
}

// relayHeaders are what a replica sends to relay the session's stream now.
func (s *Server) relayHeaders(sessionID string) http.Header {
	now := time.Now().Unix()
	h := http.Header{}
	h.Set("Authorization", "Bearer "+relayToken(s.cfg.AgentKey, sessionID, now))
	h.Set(relayTimeHeader, strconv.FormatInt(now, 10))
	return h
}

// relayRefusal says why a relay request is not from another replica, or
// "" when it is.
func (s *Server) relayRefusal(r *http.Request, sessionID string) string {
	unix, err := strconv.ParseInt(r.Header.Get(relayTimeHeader), 10, 64)
	if err != nil {
		return "no valid " + relayTimeHeader + " header"
	}
	if skew := time.Since(time.Unix(unix, 0)); skew > relaySkew || skew < -relaySkew {
		return fmt.Sprintf("token made %s away from this replica's clock", skew.Round(time.Second))
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !hmac.Equal([]byte(token), []byte(relayToken(s.cfg.AgentKey, sessionID, unix))) {
		return "wrong token"
	}
	return ""
}

// relay serves another replica's request for a stream to an agent linked
// here (or, without an upgrade, for what the agent reported).
func (a *API) relay(w http.ResponseWriter, r *http.Request) {
	sessionID := r.PathValue("session")
	if why := a.s.relayRefusal(r, sessionID); why != "" {
		a.log.Warn("relay refused", "session_id", sessionID, "remote_addr", r.RemoteAddr, "reason", why)
		httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusUnauthorized,
			"the relay endpoint serves only the other replicas of this control plane, and this request's relay token is missing, wrong or more than %s old: give every replica the same agent key and keep their clocks synchronised", relaySkew))
		return
	}
	hub := a.s.cfg.Link
	notHere := httpapi.Errorf(http.StatusNotFound, "the agent of session %s is not linked to this replica; look up where it is linked again", sessionID)
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		report, ok := hub.LocalReport(sessionID)
		if !ok {
			httpapi.WriteError(w, r, a.log, notHere)
			return
		}
		httpapi.Write(w, http.StatusOK, report)
		return
	}
	// Close waits for the relay, and a closing server takes none.
	if !a.s.enter() {
		httpapi.WriteError(w, r, a.log, httpapi.Errorf(http.StatusServiceUnavailable, "this replica is shutting down; its agents link to another in a moment"))
		return
	}
	defer a.s.leave()
	agentConn, err := hub.DialLocal(r.Context(), sessionID)
	if errors.Is(err, runtime.ErrNotFound) {
		httpapi.WriteError(w, r, a.log, notHere)
		return
	}
	if err != nil {
		httpapi.WriteError(w, r, a.log, &httpapi.Error{Status: http.StatusBadGateway, Msg: "cannot open a stream to the session's agent over its link; try again", Err: err})
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		agentConn.Close() // Accept has answered
		return
	}
	ws.SetReadLimit(-1) // NetConn streams each message, never holds it whole
	peer := websocket.NetConn(a.s.ctx, ws, websocket.MessageBinary)
	a.log.Debug("relay opened", "session_id", sessionID, "remote_addr", r.RemoteAddr)
	pipe(peer, agentConn)
}

// pipe copies between a and b until either side ends, then closes both
// and returns once both copies have stopped.
func pipe(a, b net.Conn) {
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	var wg sync.WaitGroup
	wg.Add(2)
	for _, dir := range [][2]net.Conn{{a, b}, {b, a}} {
		go func() {
			defer wg.Done()
			_, _ = io.CopyBuffer(dir[0], dir[1], make([]byte, copyBufferSize))
			closeBoth()
		}()
	}
	wg.Wait()
}

// relayClient is the hub's Remote: it finds the replica holding a
// session's link in the store and asks that replica's relay endpoint.
type relayClient struct {
	s      *Server
	client *http.Client
}

var _ link.Remote = (*relayClient)(nil)

func newRelayClient(s *Server) *relayClient {
	return &relayClient{s: s, client: &http.Client{Transport: s.peerTransport()}}
}

// notLinked is the error of a session linked to no replica that can be
// asked: the one the hub gives for a session not linked to it, so that a
// start or a connect waiting for the agent's link keeps waiting.
func notLinked(sessionID string) error {
	return fmt.Errorf("connect to session %s: its agent is not linked: %w", sessionID, runtime.ErrNotFound)
}

// holder returns the replica holding the session's link, if another one.
func (c *relayClient) holder(ctx context.Context, sessionID string) (store.Replica, error) {
	holder, err := c.s.store.LinkOf(ctx, sessionID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Replica{}, notLinked(sessionID)
	}
	if err != nil {
		return store.Replica{}, fmt.Errorf("look up the replica holding session %s's agent link: %w", sessionID, err)
	}
	// This replica's own record is stale: its hub has no such link.
	if holder.ID == c.s.replicaID() || holder.URL == "" {
		return store.Replica{}, notLinked(sessionID)
	}
	return holder, nil
}

// relayURL is the holder's relay endpoint for the session.
func relayURL(holder store.Replica, sessionID string) string {
	return strings.TrimSuffix(holder.URL, "/") + relayPath + url.PathEscape(sessionID)
}

// Dial opens a stream to the session's agent through the replica that
// holds its link.
func (c *relayClient) Dial(ctx context.Context, sessionID string) (net.Conn, error) {
	holder, err := c.holder(ctx, sessionID)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, relayDialTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(dctx, relayURL(holder, sessionID), &websocket.DialOptions{
		HTTPClient: c.client, HTTPHeader: c.s.relayHeaders(sessionID), CompressionMode: websocket.CompressionDisabled,
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusNotFound {
			return nil, notLinked(sessionID) // it moved on, or ended, since the store was read
		}
		return nil, fmt.Errorf("connect to session %s through replica %s at %s: %w", sessionID, holder.ID, holder.URL, err)
	}
	ws.SetReadLimit(-1)
	// The stream lives until the broker closes it, not as long as ctx.
	return websocket.NetConn(context.WithoutCancel(ctx), ws, websocket.MessageBinary), nil
}

// Report returns what the session's agent reported to the replica that
// holds its link.
func (c *relayClient) Report(ctx context.Context, sessionID string) (link.Report, error) {
	holder, err := c.holder(ctx, sessionID)
	if err != nil {
		return link.Report{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, relayDialTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, relayURL(holder, sessionID), nil)
	if err != nil {
		return link.Report{}, fmt.Errorf("ask replica %s about session %s's agent: %w", holder.ID, sessionID, err)
	}
	req.Header = c.s.relayHeaders(sessionID)
	resp, err := c.client.Do(req)
	if err != nil {
		return link.Report{}, fmt.Errorf("ask replica %s at %s about session %s's agent: %w", holder.ID, holder.URL, sessionID, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return link.Report{}, notLinked(sessionID)
	default:
		return link.Report{}, fmt.Errorf("ask replica %s at %s about session %s's agent: %s", holder.ID, holder.URL, sessionID, resp.Status)
	}
	var report link.Report
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&report); err != nil {
		return link.Report{}, fmt.Errorf("read replica %s's answer about session %s's agent: %w", holder.ID, sessionID, err)
	}
	return report, nil
}

// peerTransport is how a replica reaches another: directly (no proxy),
// over HTTP/1.1 (the relay is a WebSocket), checking an https replica's
// certificate as peerTLS says.
func (s *Server) peerTransport() *http.Transport {
	tlsFor := s.peerTLS()
	dialer := &net.Dialer{Timeout: relayDialTimeout}
	return &http.Transport{
		DialContext: dialer.DialContext,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return (&tls.Dialer{NetDialer: dialer, Config: tlsFor(host)}).DialContext(ctx, network, addr)
		},
	}
}

// peerTLS returns how a replica checks another's certificate when it
// dials host: one identical to its own (replicas usually share one
// certificate, which names the Service rather than each replica's address)
// is accepted as it is; anything else must chain, for host, to the
// system's roots, the CAs in this server's own chain, or those the hub was
// given (a kube backend's link_ca_file, the --dev CA).
func (s *Server) peerTLS() func(host string) *tls.Config {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	var own [][]byte
	if s.cfg.TLS != nil {
		for _, c := range s.cfg.TLS.Certificates {
			if len(c.Certificate) == 0 {
				continue
			}
			own = append(own, c.Certificate[0])
			for _, der := range c.Certificate[1:] {
				if ca, err := x509.ParseCertificate(der); err == nil {
					roots.AddCert(ca)
				}
			}
		}
	}
	if s.cfg.Link != nil {
		for _, pem := range s.cfg.Link.CAs() {
			roots.AppendCertsFromPEM(pem)
		}
	}
	return func(host string) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS12,
			ServerName: host,
			NextProtos: []string{"http/1.1"},
			// Verified in VerifyConnection instead, which also accepts
			// this server's own certificate whatever address it was
			// dialled at. The host is the one dialled: the handshake's
			// server name is empty for an IP address.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("the other replica presented no certificate")
				}
				leaf := cs.PeerCertificates[0]
				for _, der := range own {
					if bytes.Equal(der, leaf.Raw) {
						return nil
					}
				}
				intermediates := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					intermediates.AddCert(c)
				}
				_, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: intermediates})
				return err
			},
		}
	}
}
