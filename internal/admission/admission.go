// Package admission decides, as a pure function of policy and a usage
// snapshot, whether a session request is admitted and onto which GPUs. The
// server applies the decision inside the same store transaction that read
// the snapshot, so no two decisions can both take the last GPU.
package admission

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Request is what a developer asked for. Empty type or region means any.
type Request struct {
	Project string
	GPUType string
	Region  string
}

// Pool is the free and total count of one GPU type in one region.
type Pool struct {
	Type   string
	Region string
	Free   int
	Total  int
}

// Snapshot is everything the decision depends on, read in one transaction.
type Snapshot struct {
	GPUEnabled bool
	Pools      []Pool
}

// Refusal reasons, stable for metrics and clients.
const (
	ReasonGPUDisabled = "gpu_disabled"
	ReasonUnknownGPU  = "unknown_gpu"
	ReasonCapacity    = "capacity"
)

// Decision is the outcome: Admit with the pool to reserve from, or a refusal
// whose Message names the limit, the numbers and what to do.
type Decision struct {
	Admit   bool
	GPUType string
	Region  string
	Reason  string
	Message string
}

// Decide applies the checks in DESIGN.md's order. Membership is checked
// before (it decides whether the project is even visible), and the later
// policy checks (caps, quota, budget) extend this list.
func Decide(req Request, snap Snapshot) Decision {
	if !snap.GPUEnabled {
		return refuse(ReasonGPUDisabled, "GPU sessions are disabled in project %s; ask a project admin to enable them (devgpu admin project update %s --gpu-enabled=true)", req.Project, req.Project)
	}
	var matching []Pool
	for _, p := range snap.Pools {
		if (req.GPUType == "" || p.Type == req.GPUType) && (req.Region == "" || p.Region == req.Region) {
			matching = append(matching, p)
		}
	}
	if len(matching) == 0 {
		return refuse(ReasonUnknownGPU, "no %s GPU exists; choose one of: %s", describe(req), available(snap.Pools))
	}
	// Take the pool with the most free GPUs, so unspecified requests spread.
	sort.SliceStable(matching, func(i, j int) bool { return matching[i].Free > matching[j].Free })
	best := matching[0]
	if best.Free == 0 {
		total := 0
		for _, p := range matching {
			total += p.Total
		}
		return refuse(ReasonCapacity, "all %d %s GPUs are in use; try again when a session ends", total, describeTypes(req, matching))
	}
	return Decision{Admit: true, GPUType: best.Type, Region: best.Region}
}

func refuse(reason, format string, args ...any) Decision {
	return Decision{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

func describe(req Request) string {
	s := req.GPUType
	if s == "" {
		s = "matching"
	}
	if req.Region != "" {
		s += " (region " + req.Region + ")"
	}
	return s
}

// describeTypes names the GPU types (and region) a refusal is about.
func describeTypes(req Request, matching []Pool) string {
	var types []string
	for _, p := range matching {
		if !slices.Contains(types, p.Type) {
			types = append(types, p.Type)
		}
	}
	s := strings.Join(types, "/")
	if req.Region != "" {
		s += " (region " + req.Region + ")"
	}
	return s
}

func available(pools []Pool) string {
	if len(pools) == 0 {
		return "none, the inventory is empty"
	}
	var names []string
	for _, p := range pools {
		names = append(names, p.Type+" in "+p.Region)
	}
	return strings.Join(names, ", ")
}
