package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"

	"github.com/devgpu/devgpu/internal/admission"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Backend is one runtime the server drives, under the name its sessions
// record (store.Session.Backend): this host's runtime, a cluster, a cloud
// platform. The first backend of Config.Backends is the default, the one
// sessions recorded before backends existed belong to.
type Backend struct {
	Name    string
	Runtime runtime.Runtime
}

var backendName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// validateBackends checks Config.Backends: at least one, each with a
// runtime and a unique valid name.
func validateBackends(bs []Backend) error {
	if len(bs) == 0 {
		return errors.New("server: no backend to run sessions on; configure at least one runtime")
	}
	seen := map[string]bool{}
	for i, b := range bs {
		if !backendName.MatchString(b.Name) {
			return fmt.Errorf("server: backend name %q is invalid; use 1 to 63 lower-case letters, digits and dashes, starting with a letter or digit", b.Name)
		}
		if seen[b.Name] {
			return fmt.Errorf("server: backend %s is configured twice; give each backend its own name", b.Name)
		}
		seen[b.Name] = true
		if b.Runtime == nil {
			return fmt.Errorf("server: backend %s (number %d) has no runtime; configure one for it", b.Name, i+1)
		}
	}
	return nil
}

// backendOf is the backend a session runs on: the one it recorded, or the
// default for a session recorded before backends existed. A session
// recorded on a backend this server no longer drives gets one whose every
// call fails saying so, so that nothing mistakes it for gone.
func (s *Server) backendOf(sess store.Session) Backend {
	return s.backendNamed(sess.Backend)
}

// backendNamed is backendOf for a recorded backend name.
func (s *Server) backendNamed(name string) Backend {
	if name == "" {
		return s.backends[0]
	}
	for _, b := range s.backends {
		if b.Name == name {
			return b
		}
	}
	return Backend{Name: name, Runtime: unconfigured{name: name}}
}

// backendNameOf is the name of the backend a session runs on, the default
// filled in.
func (s *Server) backendNameOf(sess store.Session) string {
	if sess.Backend == "" {
		return s.backends[0].Name
	}
	return sess.Backend
}

// gpuCount is how many GPUs an active session holds (a queued request
// holds none: its GPUCount is 0 until admission places it). A record from
// before GPUCount was kept counts the devices it reserved.
func gpuCount(sess store.Session) int {
	if sess.GPUCount == 0 && len(sess.GPUs) > 0 {
		return len(sess.GPUs)
	}
	return sess.GPUCount
}

// runtimeNames describes where sessions run, for whoami: the runtime's
// name with one backend, else each backend with its runtime.
func (s *Server) runtimeNames() string {
	if len(s.backends) == 1 {
		return s.backends[0].Runtime.Name()
	}
	parts := make([]string, len(s.backends))
	for i, b := range s.backends {
		parts[i] = b.Name + " (" + b.Runtime.Name() + ")"
	}
	return strings.Join(parts, ", ")
}

// unconfigured stands for a backend that sessions recorded but this
// server's configuration no longer names.
type unconfigured struct{ name string }

func (u unconfigured) err(what string) error {
	return fmt.Errorf("%s: backend %s is not configured on this server; add it back to the server's backends to reach its sessions", what, u.name)
}

func (u unconfigured) Name() string { return u.name }
func (u unconfigured) Capacity(context.Context) ([]runtime.Capacity, error) {
	return nil, u.err("read capacity")
}
func (u unconfigured) Start(_ context.Context, spec runtime.Spec) (runtime.Placement, error) {
	return runtime.Placement{}, u.err("start session " + spec.SessionID)
}
func (u unconfigured) Connect(_ context.Context, id string) (net.Conn, error) {
	return nil, u.err("connect to session " + id)
}
func (u unconfigured) Stop(_ context.Context, id string) error {
	return u.err("stop session " + id)
}
func (u unconfigured) List(context.Context) ([]runtime.Instance, error) {
	return nil, u.err("list sessions")
}

// capacityKey is one (type, region) of one backend.
type capacityKey struct{ backend, gpuType, region string }

// capacityView is what admission decides on and places with: every
// backend's capacity and the GPUs its active sessions hold, per type and
// region. It is read inside admission's transaction.
type capacityView struct {
	order []string // backend names, in config order
	total map[capacityKey]int
	used  map[capacityKey]int
}

// readCapacity reads the view through st: the recorded capacity of the
// configured backends and the active sessions' GPUs.
func (s *Server) readCapacity(ctx context.Context, st store.Store, active []store.Session) (capacityView, error) {
	caps, err := st.ListCapacity(ctx)
	if err != nil {
		return capacityView{}, err
	}
	v := capacityView{total: map[capacityKey]int{}, used: map[capacityKey]int{}}
	configured := map[string]bool{}
	for _, b := range s.backends {
		v.order = append(v.order, b.Name)
		configured[b.Name] = true
	}
	for _, c := range caps {
		if configured[c.Backend] {
			v.total[capacityKey{c.Backend, c.Type, c.Region}] += c.Total
		}
	}
	for _, a := range active {
		if n := gpuCount(a); n > 0 {
			v.used[capacityKey{s.backendNameOf(a), a.GPUType, a.Region}] += n
		}
	}
	return v, nil
}

// free is what a backend has left of a type in a region; never below
// zero, even when its capacity shrank under what its sessions hold.
func (v capacityView) free(k capacityKey) int {
	return max(0, v.total[k]-v.used[k])
}

// pools sums the backends per type and region, ordered by type, region.
// Free adds up what each backend has left, so that one backend holding
// more than it now offers takes nothing from another's.
func (v capacityView) pools() []admission.Pool {
	index := map[[2]string]int{}
	var out []admission.Pool
	keys := make([]capacityKey, 0, len(v.total))
	for k := range v.total {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.gpuType != b.gpuType {
			return a.gpuType < b.gpuType
		}
		if a.region != b.region {
			return a.region < b.region
		}
		return a.backend < b.backend
	})
	for _, k := range keys {
		if v.total[k] <= 0 {
			continue
		}
		pk := [2]string{k.gpuType, k.region}
		i, ok := index[pk]
		if !ok {
			i = len(out)
			index[pk] = i
			out = append(out, admission.Pool{Type: k.gpuType, Region: k.region})
		}
		out[i].Total += v.total[k]
		out[i].Free += v.free(k)
	}
	return out
}

// place chooses the backend for count GPUs of a type in a region: the one
// with the most free, the earlier in the configuration on a tie; false
// when none has enough.
func (v capacityView) place(gpuType, region string, count int) (string, bool) {
	best, bestFree := "", 0
	for _, name := range v.order {
		if f := v.free(capacityKey{name, gpuType, region}); f >= count && f > bestFree {
			best, bestFree = name, f
		}
	}
	return best, best != ""
}

// inUse counts GPUs held org-wide, by type and then region, for the
// organisation's quotas.
func (v capacityView) inUse() map[string]map[string]int {
	out := map[string]map[string]int{}
	for k, n := range v.used {
		if out[k.gpuType] == nil {
			out[k.gpuType] = map[string]int{}
		}
		out[k.gpuType][k.region] += n
	}
	return out
}

// gpuPools is what /api/v1/gpus and the metrics report: per type and
// region, the GPUs of every backend and those free.
func (s *Server) gpuPools(ctx context.Context, st store.Store) ([]sdk.GPUPool, error) {
	active, err := st.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil {
		return nil, err
	}
	v, err := s.readCapacity(ctx, st, active)
	if err != nil {
		return nil, err
	}
	out := []sdk.GPUPool{}
	for _, p := range v.pools() {
		out = append(out, sdk.GPUPool{Type: p.Type, Region: p.Region, Free: p.Free, Total: p.Total})
	}
	return out, nil
}
