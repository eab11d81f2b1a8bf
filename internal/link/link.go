// Package link carries streams between the control plane and agents that
// the control plane cannot dial (Pods in a cluster, cloud containers): the
// agent dials out to the control plane's link endpoint over a WebSocket, and
// the control plane opens streams to the agent over it.
package link

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/devgpu/devgpu/internal/runtime"
)

// Report is what an agent says about itself when it links.
type Report struct {
	Node    string
	Devices []string
}

// Hub is the control plane's end of every agent link.
type Hub struct {
	log *slog.Logger
}

// NewHub returns a Hub that refuses every agent until SetVerifier.
func NewHub(log *slog.Logger) *Hub { return &Hub{log: log} }

// SetVerifier installs the check of an agent's credential for a session.
func (h *Hub) SetVerifier(verify func(sessionID, credential string) bool) {}

// ServeHTTP accepts an agent's link.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "the link endpoint is not ready yet", http.StatusServiceUnavailable)
}

// WaitLinked blocks until the session's agent has linked, or ctx is done.
func (h *Hub) WaitLinked(ctx context.Context, sessionID string) (Report, error) {
	<-ctx.Done()
	return Report{}, ctx.Err()
}

// Linked reports whether the session's agent is linked now.
func (h *Hub) Linked(sessionID string) bool { return false }

// Dial opens a new stream to the session's agent.
func (h *Hub) Dial(ctx context.Context, sessionID string) (net.Conn, error) {
	return nil, fmt.Errorf("connect to session %s over its link: %w", sessionID, runtime.ErrNotFound)
}

// Forget drops the session's link.
func (h *Hub) Forget(sessionID string) {}

// AgentConfig is how an agent links to the control plane.
type AgentConfig struct {
	URL, SessionID, Credential string
	TLS                        *tls.Config
	Report                     Report
	Log                        *slog.Logger
}

// Listen links to the control plane and returns a listener whose Accept
// yields the streams the control plane opened.
func Listen(ctx context.Context, cfg AgentConfig) net.Listener {
	panic("link.Listen: not implemented yet")
}
