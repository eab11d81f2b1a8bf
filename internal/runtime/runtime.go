// Package runtime defines what the control plane needs from the thing that
// runs sessions: start one from a Spec, open a byte stream to its agent,
// stop it, and list what exists. Implementations live in subpackages
// (local/, oci/, inproc/, kube/) and all pass runtimetest's suite.
//
// The control plane asks for GPUs by type, count and region; the runtime
// (or the engine behind it: a Kubernetes device plugin, a cloud platform)
// chooses the devices and reports where the session landed. Only the
// local, oci and inproc runtimes choose devices of their host themselves
// (hostgpu.Pool).
package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// ErrNotFound is returned for a session the runtime does not have.
var ErrNotFound = errors.New("session not found in runtime")

// RefusedError is a start error that the platform behind a runtime gave
// for a reason the user can act on or wait out, such as a cloud quota that
// is used up. Message is one sentence for the user, free of the runtime's
// internals (no URLs, ids or credentials); Err is the whole error, for the
// server's log. Other start errors reach users only as "see the server
// log".
type RefusedError struct {
	Message string
	Err     error
}

func (e *RefusedError) Error() string { return e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// GPURequest is what a session asks of a runtime: Count GPUs of Type in
// Region.
type GPURequest struct {
	Type   string
	Region string
	Count  int
}

// Placement is where a started session landed, as the engine reports it.
type Placement struct {
	// Node is the machine the session runs on: this host's name, or the
	// cluster node the scheduler chose.
	Node string
	// Devices are the GPU device ids the engine gave the session (UUIDs,
	// or GPU-sim-... when simulated), in order. A remote runtime takes them
	// from what the agent reports it sees.
	Devices []string
	// Handle is the runtime's own name for the session (a container id, a
	// Pod name); opaque to the control plane, kept for operators.
	Handle string
}

// Capacity is how many GPUs of one type in one region a runtime offers in
// all, those in use included.
type Capacity struct {
	Type   string
	Region string
	Total  int
}

// Spec is everything a runtime needs to start one session.
type Spec struct {
	SessionID string
	Project   string
	User      string
	GPU       GPURequest
	// Env is added to the environment of every process in the session.
	Env map[string]string
	// AgentSecret must be presented by whoever connects to the agent.
	AgentSecret string
	// LinkCredential is minted by the control plane for this session
	// alone: the agent of a remote runtime (kube) presents it when it dials
	// out to the control plane's link endpoint (internal/link). Runtimes
	// whose agents listen on a host-owned socket ignore it. It is delivered
	// to the agent as a mounted secret file, never in env or args.
	LinkCredential string
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
	Placement Placement
}

// Runtime runs sessions. Methods are safe for concurrent use.
type Runtime interface {
	// Name is a short identifier such as "local".
	Name() string
	// Capacity reports the GPUs the runtime offers, per type and region.
	// It answers from what the runtime already knows (its configured
	// devices, a watch of the cluster's nodes), never by asking the engine
	// per call, so that the control plane may read it at any time.
	Capacity(ctx context.Context) ([]Capacity, error)
	// Start starts the session with the GPUs spec.GPU asks for and returns
	// where it landed, once its agent accepts connections. A request the
	// runtime cannot place at all (no such type or region, no node could
	// ever fit, an image that does not exist) fails with an error that
	// says why in one sentence.
	Start(ctx context.Context, spec Spec) (Placement, error)
	// Connect opens a byte stream to the session's agent. The caller must
	// present the agent secret first (agent.WritePreamble).
	Connect(ctx context.Context, sessionID string) (net.Conn, error)
	// Stop ends the session and every process in it. Stopping a session
	// that does not exist is not an error.
	Stop(ctx context.Context, sessionID string) error
	// List returns the sessions that exist, including ones started by an
	// earlier control plane process, with where they run. It lists only
	// what this runtime (this backend of this installation) owns, never
	// another's.
	List(ctx context.Context) ([]Instance, error)
}

// CapacityWatcher is implemented by runtimes whose capacity changes while
// they run (a cluster's nodes come and go, a device plugin re-registers).
// The channel receives after each change; the control plane then reads
// Capacity again and records it for admission.
type CapacityWatcher interface {
	CapacityChanged() <-chan struct{}
}

// Imageless is implemented by runtimes that run every session on the
// host's own filesystem and ignore Spec.Image (local, inproc), so that the
// control plane can tell a user who asks for an image that none is used.
type Imageless interface {
	// IgnoresImages says why images are ignored, as a clause such as
	// "the local runtime runs sessions on this host's filesystem".
	IgnoresImages() string
}

// DeviceHolder is implemented by runtimes that choose their host's devices
// (hostgpu.Pool) and record each session's devices themselves. A session
// started by an older release has no such record: after a restart the
// control plane tells the runtime what the store says such a session
// holds, so that no device it uses is lent again.
type DeviceHolder interface {
	HoldDevices(sessionID string, devices []string)
}

// SessionEnv returns the environment contract of DESIGN.md for a spec
// whose devices the runtime chose itself. Runtimes whose engine chooses
// the devices pass nil: the agent then sets CUDA_VISIBLE_DEVICES from what
// it sees (agent.VisibleDevices), and the engine sets
// NVIDIA_VISIBLE_DEVICES.
func SessionEnv(spec Spec, devices []string) map[string]string {
	env := map[string]string{
		"DEVGPU_SESSION_ID": spec.SessionID,
		"DEVGPU_PROJECT":    spec.Project,
		"DEVGPU_USER":       spec.User,
		"DEVGPU_GPU_TYPE":   spec.GPU.Type,
	}
	if devices != nil {
		ids := strings.Join(devices, ",")
		env["CUDA_VISIBLE_DEVICES"] = ids
		env["NVIDIA_VISIBLE_DEVICES"] = ids
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
