package server

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"time"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Agents that the control plane cannot dial (Pods in a cluster) dial out
// to GET /api/v1/agent/link instead, where Config.Link (internal/link)
// accepts them. The route takes no user token: the hub authenticates the
// agent with its session's link credential, which verifyLink checks. The
// link is a hijacked WebSocket, like a shell's tunnel, so the front door's
// read timeouts do not cut it; it is not one of a user's tunnels, so their
// caps do not apply.

// linkVerifyTimeout bounds the store read of a link's check.
const linkVerifyTimeout = 5 * time.Second

// verifyLink reports whether credential is the link credential of the
// session, and the session may link now: it exists and is starting or
// running. A session that ended, or one never started, has no link. It
// returns an error, not false, when the store cannot be read: the hub then
// asks the agent to retry instead of refusing it for good, which would end
// a running session whose agent cannot be restarted.
func (s *Server) verifyLink(sessionID, credential string) (bool, error) {
	if !runtime.ValidID(sessionID) || !hmac.Equal([]byte(credential), []byte(s.linkCredential(sessionID))) {
		s.log.Warn("agent link refused: wrong credential", "session_id", sessionID)
		return false, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, linkVerifyTimeout)
	defer cancel()
	sess, err := s.store.Session(ctx, sessionID)
	if errors.Is(err, store.ErrNotFound) {
		s.log.Warn("agent link refused: no such session", "session_id", sessionID)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read session %s to check its agent's link: %w", sessionID, err)
	}
	if sess.State != sdk.StateStarting && sess.State != sdk.StateRunning {
		s.log.Warn("agent link refused: session not starting or running", "session_id", sessionID, "state", sess.State)
		return false, nil
	}
	return true, nil
}
