// Package admission decides, as a pure function of policy and a usage
// snapshot, whether a session request is admitted, joins one of the
// caller's sessions (shared and spillover shell modes), or is refused, and
// whether a refusal may queue. The server applies the decision inside the
// store transaction that read the snapshot, so no two decisions can both
// take the last GPU, and no cap is ever exceeded.
package admission

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/sdk"
)

// Request is what a developer asked for. Empty type, region or image
// means any (the project's default image).
type Request struct {
	Project string
	User    string
	GPUType string
	Region  string
	Image   string
}

// Pool is the free and total count of one GPU type in one region.
type Pool struct {
	Type   string
	Region string
	Free   int
	Total  int
}

// UserSession is one of the caller's active sessions in the project.
type UserSession struct {
	ID          string
	GPUs        int
	Attachments int
}

// Snapshot is everything the decision depends on, read in one transaction.
type Snapshot struct {
	Policy policy.Effective
	Quotas []sdk.Quota
	Pools  []Pool
	// ProjectGPUs and UserGPUs count GPUs held by the project's active
	// sessions, and by the caller's among them.
	ProjectGPUs int
	UserGPUs    int
	// InUse counts GPUs held org-wide, by type and then region.
	InUse map[string]map[string]int
	// UserSessions are the caller's active sessions in the project.
	UserSessions []UserSession
	// Budget, when not empty, is why the project's budget refuses new
	// sessions (set by metering).
	Budget string
}

// Refusal reasons, stable for metrics and clients.
const (
	ReasonGPUDisabled   = "gpu_disabled"
	ReasonTypeForbidden = "gpu_type_not_allowed"
	ReasonUnknownGPU    = "unknown_gpu"
	ReasonImage         = "image_not_allowed"
	ReasonBudget        = "budget"
	ReasonUserCap       = "user_cap"
	ReasonProjectCap    = "project_cap"
	ReasonQuota         = "org_quota"
	ReasonCapacity      = "capacity"
)

// Outcome is what the decision says to do.
type Outcome int

const (
	Refuse Outcome = iota
	Admit          // start a new session on GPUType/Region
	Join           // attach to the caller's session Session
)

// Decision is the outcome. A refusal's Message names the limit, the
// numbers and what to do; Queueable says whether waiting can help.
type Decision struct {
	Outcome   Outcome
	GPUType   string
	Region    string
	Image     string
	Session   string // for Join
	Reason    string
	Message   string
	Queueable bool
}

// Decide applies the checks in DESIGN.md's order: GPU enabled, type and
// region allowed, image allowed, (budget, checked by the caller's
// metering), per-user cap, project cap, org quota, capacity. Membership is
// checked before, as it decides whether the project is visible at all.
func Decide(req Request, snap Snapshot) Decision {
	p := snap.Policy
	if !p.GPUEnabled {
		return refuse(ReasonGPUDisabled, false, "GPU sessions are disabled in project %s; ask a project admin to enable them (devgpu admin project update %s --gpu-enabled=true)", req.Project, req.Project)
	}
	if p.ShellMode == sdk.ModeShared {
		if s, ok := leastLoaded(snap.UserSessions); ok {
			return Decision{Outcome: Join, Session: s.ID}
		}
	}
	if req.GPUType != "" && len(p.GPUTypes) > 0 && !slices.Contains(p.GPUTypes, req.GPUType) {
		return refuse(ReasonTypeForbidden, false, "GPU type %s is not allowed in project %s; allowed: %s", req.GPUType, req.Project, strings.Join(p.GPUTypes, ", "))
	}
	if req.Region != "" && len(p.Regions) > 0 && !slices.Contains(p.Regions, req.Region) {
		return refuse(ReasonTypeForbidden, false, "region %s is not allowed in project %s; allowed: %s", req.Region, req.Project, strings.Join(p.Regions, ", "))
	}
	candidates := allowedPools(req, p, snap.Pools)
	if len(candidates) == 0 {
		return refuse(ReasonUnknownGPU, false, "no %s GPU exists for project %s; choose one of: %s", describe(req), req.Project, available(p, snap.Pools))
	}
	image := req.Image
	if image == "" {
		image = p.DefaultImage
	}
	if image != "" && len(p.Images) > 0 && !slices.Contains(p.Images, image) {
		return refuse(ReasonImage, false, "image %s is not allowed in project %s; allowed: %s", image, req.Project, strings.Join(p.Images, ", "))
	}
	if snap.Budget != "" {
		return refuse(ReasonBudget, false, "%s", snap.Budget)
	}
	if p.MaxGPUsPerUser > 0 && snap.UserGPUs+1 > p.MaxGPUsPerUser {
		if s, ok := leastLoaded(snap.UserSessions); ok && p.ShellMode == sdk.ModeSpillover {
			return Decision{Outcome: Join, Session: s.ID}
		}
		return refuse(ReasonUserCap, true, "you use %d of your %d GPUs in project %s; end a session (devgpu sessions list) or wait with --wait", snap.UserGPUs, p.MaxGPUsPerUser, req.Project)
	}
	if p.MaxGPUs > 0 && snap.ProjectGPUs+1 > p.MaxGPUs {
		return refuse(ReasonProjectCap, true, "project %s uses %d of its %d GPUs; wait with --wait, or ask a project admin to raise max_gpus", req.Project, snap.ProjectGPUs, p.MaxGPUs)
	}
	// Among the allowed pools, those within the org quota, then those with
	// a free GPU; the one with the most free GPUs spreads the load.
	var withinQuota []Pool
	var quotaHit string
	for _, pool := range candidates {
		if q, used, ok := quotaFull(snap.Quotas, snap.InUse, pool); ok {
			quotaHit = fmt.Sprintf("the organisation's %s quota is used up: %d of %d GPUs in use; wait with --wait, or ask an org admin to raise it", quotaName(q), used, q.Max)
			continue
		}
		withinQuota = append(withinQuota, pool)
	}
	if len(withinQuota) == 0 {
		return refuse(ReasonQuota, true, "%s", quotaHit)
	}
	sort.SliceStable(withinQuota, func(i, j int) bool { return withinQuota[i].Free > withinQuota[j].Free })
	best := withinQuota[0]
	if best.Free == 0 {
		total := 0
		for _, pool := range withinQuota {
			total += pool.Total
		}
		return refuse(ReasonCapacity, true, "all %d %s GPUs are in use; try again when a session ends, or wait with --wait", total, describeTypes(req, withinQuota))
	}
	return Decision{Outcome: Admit, GPUType: best.Type, Region: best.Region, Image: image}
}

func refuse(reason string, queueable bool, format string, args ...any) Decision {
	return Decision{Outcome: Refuse, Reason: reason, Queueable: queueable, Message: fmt.Sprintf(format, args...)}
}

// leastLoaded is the caller's session with the fewest shells.
func leastLoaded(sessions []UserSession) (UserSession, bool) {
	if len(sessions) == 0 {
		return UserSession{}, false
	}
	best := sessions[0]
	for _, s := range sessions[1:] {
		if s.Attachments < best.Attachments {
			best = s
		}
	}
	return best, true
}

// allowedPools are the pools the request and the project's policy allow.
func allowedPools(req Request, p policy.Effective, pools []Pool) []Pool {
	var out []Pool
	for _, pool := range pools {
		if (req.GPUType == "" || pool.Type == req.GPUType) && (req.Region == "" || pool.Region == req.Region) &&
			(len(p.GPUTypes) == 0 || slices.Contains(p.GPUTypes, pool.Type)) &&
			(len(p.Regions) == 0 || slices.Contains(p.Regions, pool.Region)) {
			out = append(out, pool)
		}
	}
	return out
}

// quotaFull returns the quota that one more GPU of the pool would exceed.
func quotaFull(quotas []sdk.Quota, inUse map[string]map[string]int, pool Pool) (sdk.Quota, int, bool) {
	for _, q := range quotas {
		if q.GPUType != pool.Type || (q.Region != "" && q.Region != pool.Region) {
			continue
		}
		used := 0
		for region, n := range inUse[q.GPUType] {
			if q.Region == "" || region == q.Region {
				used += n
			}
		}
		if used+1 > q.Max {
			return q, used, true
		}
	}
	return sdk.Quota{}, 0, false
}

func quotaName(q sdk.Quota) string {
	if q.Region == "" {
		return q.GPUType
	}
	return q.GPUType + " (region " + q.Region + ")"
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
func describeTypes(req Request, pools []Pool) string {
	var types []string
	for _, p := range pools {
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

// available lists what the project could ask for instead.
func available(p policy.Effective, pools []Pool) string {
	var names []string
	for _, pool := range allowedPools(Request{}, p, pools) {
		names = append(names, pool.Type+" in "+pool.Region)
	}
	if len(names) == 0 {
		return "none, no GPU in the inventory is allowed for this project"
	}
	return strings.Join(names, ", ")
}
