// Package runtime defines what the control plane needs from the thing that
// runs sessions: start one from a Spec, open a byte stream to its agent,
// stop it, and list what exists. Implementations live in subpackages
// (local/, later oci/, kube/, aca/) and all pass runtimetest's suite.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// ErrNotFound is returned for a session the runtime does not have.
var ErrNotFound = errors.New("session not found in runtime")

// Spec is everything a runtime needs to start one session.
type Spec struct {
	SessionID string
	Project   string
	User      string
	GPUType   string
	GPUs      []string // device IDs (UUIDs), in order
	// Env is added to the environment of every process in the session.
	Env map[string]string
	// AgentSecret must be presented by whoever connects to the agent.
	AgentSecret string
	// Image is the image reference the session runs (runtimes without
	// images ignore it); empty means the runtime's default.
	Image string
	// Egress is the session's network policy (runtimes without network
	// isolation ignore it).
	Egress sdk.Egress
	// Workspace is a host directory that outlives the session (the user's
	// persistent workspace in the project), to be mounted into it; empty
	// means none. WorkspaceReadOnly mounts it read-only.
	Workspace         string
	WorkspaceReadOnly bool
	// WorkspaceLimitBytes bounds what the workspace may hold, enforced for
	// as long as the session runs by runtimes that can (oci with disk
	// limits: writes past it fail with ENOSPC); 0 is no limit of its own.
	// The local runtime cannot enforce it.
	WorkspaceLimitBytes int64
	// Progress, when set, hears how a slow step of the start goes, such as
	// pulling the image: what it is doing, and bytes done of total.
	Progress func(step string, done, total int64)
	// IdleExit makes the agent stop by itself after this long without any
	// connection, so that a session outlives a dead control plane only
	// briefly. Zero means never.
	IdleExit time.Duration
}

// Instance is a session as the runtime sees it.
type Instance struct {
	SessionID string
	StartedAt time.Time
}

// Runtime runs sessions. Methods are safe for concurrent use.
type Runtime interface {
	// Name is a short identifier such as "local".
	Name() string
	// Start starts the session and returns once its agent accepts connections.
	Start(ctx context.Context, spec Spec) error
	// Connect opens a byte stream to the session's agent. The caller must
	// present the agent secret first (agent.WritePreamble).
	Connect(ctx context.Context, sessionID string) (net.Conn, error)
	// Stop ends the session and every process in it. Stopping a session
	// that does not exist is not an error.
	Stop(ctx context.Context, sessionID string) error
	// List returns the sessions that exist, including ones started by an
	// earlier control plane process.
	List(ctx context.Context) ([]Instance, error)
}

// Imageless is implemented by runtimes that run every session on the
// host's own filesystem and ignore Spec.Image (local, inproc), so that the
// control plane can tell a user who asks for an image that none is used.
type Imageless interface {
	// IgnoresImages says why images are ignored, as a clause such as
	// "the local runtime runs sessions on this host's filesystem".
	IgnoresImages() string
}

// SessionEnv returns the environment contract of DESIGN.md for a spec.
func SessionEnv(spec Spec) map[string]string {
	ids := ""
	for i, g := range spec.GPUs {
		if i > 0 {
			ids += ","
		}
		ids += g
	}
	env := map[string]string{
		"DEVGPU_SESSION_ID":      spec.SessionID,
		"DEVGPU_PROJECT":         spec.Project,
		"DEVGPU_USER":            spec.User,
		"DEVGPU_GPU_TYPE":        spec.GPUType,
		"CUDA_VISIBLE_DEVICES":   ids,
		"NVIDIA_VISIBLE_DEVICES": ids,
	}
	for k, v := range spec.Env {
		env[k] = v
	}
	return env
}

// DialSocket connects to a session agent's unix socket at path. A socket
// that is gone or refuses is runtime.ErrNotFound: the agent is not there.
func DialSocket(ctx context.Context, id, path string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connect to session %s: %w", id, ErrNotFound)
		}
		return nil, fmt.Errorf("connect to session %s: %w", id, err)
	}
	return conn, nil
}

// ValidID reports whether id is a session id a runtime accepts: lower-case
// letters, digits and dashes, at most 40, so that it is safe as a path
// element, a container name and a host name.
func ValidID(id string) bool {
	if id == "" || len(id) > 40 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
