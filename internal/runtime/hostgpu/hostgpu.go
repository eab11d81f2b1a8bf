// Package hostgpu is the device pool of runtimes that choose the GPUs of
// their own host for each session (local, oci, inproc): the control plane
// asks for N GPUs of a type in a region, the pool hands out free devices
// and takes them back when the session stops. Runtimes whose engine picks
// the devices (kube) do not use it.
//
// A pool is memory only. A runtime records the devices of each session in
// its own state and, when it is constructed again over that state (a
// restarted control plane), gives them back to the pool with Hold, so that
// a held device is never handed to a second session.
package hostgpu

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/devgpu/devgpu/internal/gpu"
	"github.com/devgpu/devgpu/internal/runtime"
)

// Device is one GPU of the host that the pool can lend.
type Device struct {
	ID     string // NVML UUID, or GPU-sim-... when simulated
	Type   string // short type admins write in policy: t4, a100
	Region string
}

// FromGPU turns a discovered or simulated inventory into pool devices.
func FromGPU(devs []gpu.Device) []Device {
	out := make([]Device, len(devs))
	for i, d := range devs {
		out[i] = Device{ID: d.ID, Type: d.Type, Region: cmp.Or(d.Region, gpu.DefaultRegion)}
	}
	return out
}

// Simulated is the pool devices of a simulated inventory such as
// "t4:4,a100:2@westus3" (gpu.ParseSimulated), for tests and --gpus.
func Simulated(spec string) ([]Device, error) {
	devs, err := gpu.ParseSimulated(spec)
	if err != nil {
		return nil, err
	}
	return FromGPU(devs), nil
}

// Pool lends a host's devices to sessions. It is safe for concurrent use.
type Pool struct {
	devices []Device // in the order given: Take prefers the earliest

	mu     sync.Mutex
	holder map[string]string   // device id -> session holding it
	held   map[string][]string // session -> its device ids, in order
}

// NewPool returns a pool of devs with none held. Devices named twice
// count once.
func NewPool(devs []Device) *Pool {
	p := &Pool{holder: map[string]string{}, held: map[string][]string{}}
	seen := map[string]bool{}
	for _, d := range devs {
		if d.ID == "" || seen[d.ID] {
			continue
		}
		seen[d.ID] = true
		p.devices = append(p.devices, d)
	}
	return p
}

// Devices returns the pool's devices, in order.
func (p *Pool) Devices() []Device { return slices.Clone(p.devices) }

// Capacity is how many devices the pool has per type and region, held or
// not, sorted by type and then region.
func (p *Pool) Capacity() []runtime.Capacity {
	var caps []runtime.Capacity
	for _, d := range p.devices {
		i := slices.IndexFunc(caps, func(c runtime.Capacity) bool { return c.Type == d.Type && c.Region == d.Region })
		if i < 0 {
			caps = append(caps, runtime.Capacity{Type: d.Type, Region: d.Region})
			i = len(caps) - 1
		}
		caps[i].Total++
	}
	slices.SortFunc(caps, func(a, b runtime.Capacity) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Region, b.Region))
	})
	return caps
}

// matches reports whether d is of the type and region req asks for; an
// empty type or region in req matches any.
func matches(d Device, req runtime.GPURequest) bool {
	return (req.Type == "" || d.Type == req.Type) && (req.Region == "" || d.Region == req.Region)
}

// Take gives the session req.Count free devices of req's type and region,
// the earliest in the pool's order first, and returns their ids. A request
// for no GPUs takes none and returns an empty, non-nil list (the session
// sees no GPU). When too few are free it takes none and says how many
// there are: admission, which counts the sessions' GPUs against the
// capacity, should have prevented that.
func (p *Pool) Take(sessionID string, req runtime.GPURequest) ([]string, error) {
	if req.Count < 0 {
		return nil, fmt.Errorf("session %s asks for %d GPUs; ask for 0 or more", sessionID, req.Count)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ids, ok := p.held[sessionID]; ok {
		return nil, fmt.Errorf("session %s already holds GPUs %v; stop it before starting it again", sessionID, ids)
	}
	ids := []string{}
	total := 0
	for _, d := range p.devices {
		if !matches(d, req) {
			continue
		}
		total++
		if _, busy := p.holder[d.ID]; !busy && len(ids) < req.Count {
			ids = append(ids, d.ID)
		}
	}
	if len(ids) < req.Count {
		return nil, fmt.Errorf("session %s asks for %d %s GPUs in region %s, but this host has %d of them and %d are free; admission should have queued it",
			sessionID, req.Count, cmp.Or(req.Type, "any"), cmp.Or(req.Region, "any"), total, len(ids))
	}
	for _, id := range ids {
		p.holder[id] = sessionID
	}
	p.held[sessionID] = ids
	return slices.Clone(ids), nil
}

// Hold records that the session holds ids, as a runtime found it in its
// own state after a restart. Ids the pool does not have (the inventory
// changed) are kept with the session but lend nothing; a device another
// session holds stays with that one.
func (p *Pool) Hold(sessionID string, ids []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := slices.Clone(p.held[sessionID])
	for _, id := range ids {
		if h, busy := p.holder[id]; busy && h != sessionID {
			continue
		}
		p.holder[id] = sessionID
		if !slices.Contains(kept, id) {
			kept = append(kept, id)
		}
	}
	p.held[sessionID] = kept
}

// Reset replaces what the pool knows to be held with held (session ->
// its device ids): for a runtime whose sessions other processes on this
// host start and stop too (replicas sharing one state directory), which
// re-reads what is held before it takes. A device claimed by two sessions
// in held goes to the first in session order.
func (p *Pool) Reset(held map[string][]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holder, p.held = map[string]string{}, map[string][]string{}
	ids := slices.Sorted(maps.Keys(held))
	for _, id := range ids {
		var kept []string
		for _, dev := range held[id] {
			if _, busy := p.holder[dev]; !busy {
				p.holder[dev] = id
				kept = append(kept, dev)
			}
		}
		p.held[id] = kept
	}
}

// Held returns the devices the session holds, nil for none.
func (p *Pool) Held(sessionID string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.held[sessionID])
}

// Release gives back what the session holds. Releasing a session that
// holds nothing does nothing.
func (p *Pool) Release(sessionID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range p.held[sessionID] {
		if p.holder[id] == sessionID {
			delete(p.holder, id)
		}
	}
	delete(p.held, sessionID)
}
