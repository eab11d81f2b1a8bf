// Package inproc is a runtime for tests: each session's agent runs as a
// goroutine of the calling process, serving a unix socket, instead of a
// process of its own. The agent is the real one, so the runtime passes the
// same conformance suite as the others; what it does not give is process
// isolation, which tests of admission and lifecycle do not need, while
// they start hundreds of sessions at almost no cost.
//
// The registry holds the host's devices: each runtime lends them from its
// own hostgpu.Pool, which it fills at construction with what the
// registry's sessions hold, as a restarted control plane would.
//
// A session's persistent workspace (runtime.Spec.Workspace) is neither
// mounted nor linked: DEVGPU_WORKSPACE names the host directory, and
// WorkspaceReadOnly is only a hint, DEVGPU_WORKSPACE_READONLY=1.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/devgpu/devgpu/internal/agent"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
)

var _ runtime.Runtime = (*Runtime)(nil)

// Registry is the state runtimes share, as a host's processes are shared
// by every control plane that runs on it. Runtimes made from one Registry
// see the same sessions.
type Registry struct {
	dir      string
	devices  []hostgpu.Device
	mu       sync.Mutex
	sessions map[string]*session
}

type session struct {
	cancel    context.CancelFunc
	done      chan struct{}
	startedAt time.Time
	placement runtime.Placement
}

// NewRegistry keeps sockets in dir, which must be short (unix socket paths
// are limited to about 100 bytes), and lends devices, the host's GPUs
// (hostgpu.Simulated makes some); a registry without devices offers none.
func NewRegistry(dir string, devices ...hostgpu.Device) *Registry {
	return &Registry{dir: dir, devices: slices.Clone(devices), sessions: map[string]*session{}}
}

// Runtime runs sessions as goroutines.
type Runtime struct {
	reg  *Registry
	pool *hostgpu.Pool
}

// New returns a runtime over the registry's sessions, holding the devices
// they hold.
func New(reg *Registry) *Runtime {
	r := &Runtime{reg: reg, pool: hostgpu.NewPool(reg.devices)}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	for id, s := range reg.sessions {
		r.pool.Hold(id, s.placement.Devices)
	}
	return r
}

// Name implements runtime.Runtime.
func (r *Runtime) Name() string { return "inproc" }

// Capacity implements runtime.Runtime: the registry's devices.
func (r *Runtime) Capacity(context.Context) ([]runtime.Capacity, error) {
	return r.pool.Capacity(), nil
}

// IgnoresImages implements runtime.Imageless.
func (r *Runtime) IgnoresImages() string {
	return "the inproc runtime runs agents inside the server process"
}

func (r *Runtime) socket(id string) string { return filepath.Join(r.reg.dir, id+".sock") }

// Start implements runtime.Runtime.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (pl runtime.Placement, err error) {
	r.reg.mu.Lock()
	_, exists := r.reg.sessions[spec.SessionID]
	r.reg.mu.Unlock()
	if exists {
		return pl, fmt.Errorf("inproc runtime: session %s exists", spec.SessionID)
	}
	devices, err := r.pool.Take(spec.SessionID, spec.GPU)
	if err != nil {
		return pl, fmt.Errorf("inproc runtime: %w", err)
	}
	defer func() {
		if err != nil {
			r.pool.Release(spec.SessionID)
		}
	}()
	senv := runtime.SessionEnv(spec, devices)
	if spec.Workspace != "" {
		abs, err := filepath.Abs(spec.Workspace)
		if err != nil {
			return pl, fmt.Errorf("inproc runtime: workspace: %w", err)
		}
		if fi, err := os.Stat(abs); err != nil {
			return pl, fmt.Errorf("inproc runtime: workspace %s: %w", abs, err)
		} else if !fi.IsDir() {
			return pl, fmt.Errorf("inproc runtime: workspace %s is not a directory", abs)
		}
		senv["DEVGPU_WORKSPACE"] = abs
		delete(senv, "DEVGPU_WORKSPACE_READONLY")
		if spec.WorkspaceReadOnly {
			senv["DEVGPU_WORKSPACE_READONLY"] = "1"
		}
	}
	ln, err := net.Listen("unix", r.socket(spec.SessionID))
	if err != nil {
		return pl, fmt.Errorf("inproc runtime: %w", err)
	}
	pl = runtime.Placement{Node: hostname(), Devices: devices, Handle: r.socket(spec.SessionID)}
	env := os.Environ()
	for k, v := range senv {
		env = append(env, k+"="+v)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &session{cancel: cancel, done: make(chan struct{}), startedAt: time.Now(), placement: pl}
	r.reg.mu.Lock()
	r.reg.sessions[spec.SessionID] = s
	r.reg.mu.Unlock()
	go func() {
		defer close(s.done)
		_ = agent.Serve(sctx, ln, agent.Config{Secret: spec.AgentSecret, Env: env, IdleExit: spec.IdleExit})
		r.reg.mu.Lock()
		if r.reg.sessions[spec.SessionID] == s {
			delete(r.reg.sessions, spec.SessionID)
		}
		r.reg.mu.Unlock()
		_ = os.Remove(r.socket(spec.SessionID))
	}()
	return clonePlacement(pl), nil
}

// hostname is this host's name, the node of every session.
func hostname() string {
	name, err := os.Hostname()
	if err != nil || name == "" {
		return "localhost"
	}
	return name
}

// Connect implements runtime.Runtime.
func (r *Runtime) Connect(ctx context.Context, id string) (net.Conn, error) {
	r.reg.mu.Lock()
	_, ok := r.reg.sessions[id]
	r.reg.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("connect to session %s: %w", id, runtime.ErrNotFound)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", r.socket(id))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("connect to session %s: %w", id, runtime.ErrNotFound), err)
	}
	return conn, nil
}

// Stop implements runtime.Runtime: the agent kills what it started, and
// the session's devices go back to the pool once it has.
func (r *Runtime) Stop(ctx context.Context, id string) error {
	r.reg.mu.Lock()
	s := r.reg.sessions[id]
	r.reg.mu.Unlock()
	if s == nil {
		r.pool.Release(id)
		return nil
	}
	s.cancel()
	select {
	case <-s.done:
		r.pool.Release(id)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// List implements runtime.Runtime.
func (r *Runtime) List(ctx context.Context) ([]runtime.Instance, error) {
	r.reg.mu.Lock()
	sessions := maps.Clone(r.reg.sessions)
	r.reg.mu.Unlock()
	out := make([]runtime.Instance, 0, len(sessions))
	for id, s := range sessions {
		out = append(out, runtime.Instance{SessionID: id, StartedAt: s.startedAt, Placement: clonePlacement(s.placement)})
	}
	return out, nil
}

func clonePlacement(p runtime.Placement) runtime.Placement {
	p.Devices = slices.Clone(p.Devices)
	return p
}
