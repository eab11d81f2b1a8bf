// Package link carries streams between the control plane and agents it
// cannot dial (Pods in a cluster, cloud containers). The agent dials out to
// the control plane's link endpoint over a WebSocket, authenticated by a
// credential minted for its session alone, and the two ends run a yamux
// session over it: the control plane opens streams (Hub.Dial), the agent
// accepts them (Listen). Each stream then carries what a unix socket to a
// local agent would: the preamble and SSH.
package link

import (
	"errors"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Path is where the control plane serves the link endpoint. An agent URL
// without a path gets it.
const Path = "/api/v1/agent/link"

// The headers an agent presents when it links.
const (
	headerSession = "X-Devgpu-Session"
	headerReport  = "X-Devgpu-Report"
)

// Report is what an agent says about itself when it links.
type Report struct {
	// Node is the machine the agent runs on (the Pod's node).
	Node string `json:"node,omitempty"`
	// Devices are the GPU ids the agent sees (agent.VisibleDevices).
	Devices []string `json:"devices,omitempty"`
}

// maxReportBytes bounds the report header: a node name and a few device
// ids fit many times over.
const maxReportBytes = 8 << 10

const (
	// keepAliveInterval is how often each end pings the other, so that a
	// link whose peer vanished (node lost, network cut) is noticed within
	// keepAliveInterval+writeTimeout and dropped.
	keepAliveInterval = 15 * time.Second
	// writeTimeout bounds a write or a ping's answer on the link.
	writeTimeout = 20 * time.Second
	// handshakeTimeout bounds an agent's dial and WebSocket handshake.
	handshakeTimeout = 30 * time.Second
	// maxPending bounds the agents the hub handshakes with at once.
	maxPending = 64
	// remotePoll is how often a start waiting for its agent's first link
	// asks whether another replica holds it: each ask is a store read.
	remotePoll = 500 * time.Millisecond
)

// Close codes the hub sends when it ends a link, beside the WebSocket's own.
const (
	// statusStopped: the session was stopped (Hub.Forget); the agent must
	// not link again.
	statusStopped = 4000
)

// ErrStopped is what the agent's Accept returns (wrapped) after the control
// plane stopped the session and ended its link; the agent should exit.
var ErrStopped = errors.New("the control plane stopped the session and ended its link")

// ErrRefused is what the agent's Accept returns (wrapped) when the control
// plane refuses the agent's credential or request; retrying cannot help.
var ErrRefused = errors.New("the control plane refused the agent's link")

// endedError ends an agent's listener. It counts as net.ErrClosed too, so
// that accept loops written for closed listeners (agent.Serve) stop on it.
type endedError struct {
	msg   string
	cause error
}

func (e *endedError) Error() string        { return e.msg }
func (e *endedError) Unwrap() error        { return e.cause }
func (e *endedError) Is(target error) bool { return target == net.ErrClosed }

// yamuxConfig is the configuration of both ends: a ping every keepAlive,
// and a link whose write or ping takes longer than timeout is dead.
func yamuxConfig(keepAlive, timeout time.Duration) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = keepAlive
	cfg.ConnectionWriteTimeout = timeout
	cfg.LogOutput = nil
	cfg.Logger = discardLogger{}
	return cfg
}

// discardLogger silences yamux: every failure it logs also surfaces as an
// error we handle and log ourselves.
type discardLogger struct{}

func (discardLogger) Print(...any)          {}
func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
