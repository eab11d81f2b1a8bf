package server

import (
	"context"
	"math"
	"net/http"
	"slices"
	"strings"

	"github.com/devgpu/devgpu/internal/admission"
	"github.com/devgpu/devgpu/internal/httpapi"
	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Where projects stand against their limits, GET /api/v1/standing: for
// each project the caller may see (a member's, or all of them for an
// organisation admin), its use against its caps, what the caller can
// still start, the GPUs it may use and its month's budget. Everything is
// computed as admission and the budget check compute it.

func (a *API) standing(w http.ResponseWriter, r *http.Request, caller store.User) error {
	out, err := a.s.standing(r.Context(), caller)
	if err != nil {
		return err
	}
	httpapi.Write(w, http.StatusOK, out)
	return nil
}

// standing reads every project's standing for the caller, sorted by name.
func (s *Server) standing(ctx context.Context, caller store.User) ([]sdk.ProjectStanding, error) {
	org, err := s.store.OrgPolicy(ctx)
	if err != nil {
		return nil, err
	}
	projects, err := s.store.ListProjects(ctx)
	if err != nil {
		return nil, err
	}
	active, err := s.store.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
	if err != nil {
		return nil, err
	}
	v, err := s.readCapacity(ctx, s.store, active)
	if err != nil {
		return nil, err
	}
	month := metering.Month(s.now())
	out := []sdk.ProjectStanding{}
	for _, p := range projects {
		role, visible, err := s.roleIn(ctx, s.store, caller, p.ID)
		if err != nil {
			return nil, err
		}
		if !visible {
			continue
		}
		eff := policy.Resolve(org, p.Settings)
		snap := projectSnapshot(active, v, p, caller, eff, org)
		st := sdk.ProjectStanding{
			Project: p.Name, Role: string(role), GPUEnabled: eff.GPUEnabled,
			GPUsInUse: snap.ProjectGPUs, MaxGPUs: eff.MaxGPUs,
			MyGPUsInUse: snap.UserGPUs, MaxGPUsPerUser: eff.MaxGPUsPerUser,
			GPUTypes: allowedGPUs(eff, snap.Pools), Currency: s.currency(),
		}
		// The month's use, as the budget check reads it (budgetUse).
		cost, seconds, err := s.monthUse(ctx, s.store, p.ID, month)
		if err != nil {
			return nil, err
		}
		b := budgetState{budget: eff.Budget, month: month, percent: metering.BudgetUse(eff.Budget, cost, seconds)}
		st.Spent = float64(cost) / 1e6
		if eff.Budget.Amount > 0 {
			budget := eff.Budget
			st.Budget = &budget
			if budget.Unit == sdk.BudgetGPUHours {
				st.Spent = seconds / 3600
			}
			st.Remaining = math.Max(0, budget.Amount-st.Spent)
		}
		snap.Budget = b.refusal(p.Name, st.Currency)
		queued, err := s.queueLength(ctx, s.store, p.ID)
		if err != nil {
			return nil, err
		}
		if queued == 0 { // else a new request waits its turn behind them
			st.CanStart = canStart(snap, p.Name, caller.Name)
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b sdk.ProjectStanding) int { return strings.Compare(a.Project, b.Project) })
	return out, nil
}

// canStart is how many more GPUs admission would grant the caller now, one
// session after another, from the snapshot: the least of what the
// per-user and project caps, the organisation's quotas and the free GPUs
// of the allowed types leave; 0 when admission refuses outright (GPUs
// disabled, the budget spent). The free GPUs bound it, so it is never
// unbounded. Images are left out (they bound no GPU count), and each new
// session is its own (not joined to one of the caller's).
func canStart(snap admission.Snapshot, project, user string) int {
	snap.Policy.ShellMode = sdk.ModeDedicated
	snap.Policy.Images = nil
	snap.UserSessions = nil
	snap.Pools = slices.Clone(snap.Pools)
	inUse := map[string]map[string]int{}
	for t, regions := range snap.InUse {
		inUse[t] = map[string]int{}
		for r, n := range regions {
			inUse[t][r] = n
		}
	}
	snap.InUse = inUse
	free := 0
	for _, p := range snap.Pools {
		free += p.Free
	}
	n := 0
	for n < free {
		d := admission.Decide(admission.Request{Project: project, User: user}, snap)
		if d.Outcome != admission.Admit {
			break
		}
		n++
		snap.ProjectGPUs += sessionGPUs
		snap.UserGPUs += sessionGPUs
		if snap.InUse[d.GPUType] == nil {
			snap.InUse[d.GPUType] = map[string]int{}
		}
		snap.InUse[d.GPUType][d.Region] += sessionGPUs
		for i := range snap.Pools {
			if snap.Pools[i].Type == d.GPUType && snap.Pools[i].Region == d.Region {
				snap.Pools[i].Free -= sessionGPUs
			}
		}
	}
	return n
}

// allowedGPUs are the pools of the types and regions the project allows.
func allowedGPUs(eff policy.Effective, pools []admission.Pool) []sdk.GPUPool {
	out := []sdk.GPUPool{}
	for _, p := range pools {
		if (len(eff.GPUTypes) == 0 || slices.Contains(eff.GPUTypes, p.Type)) &&
			(len(eff.Regions) == 0 || slices.Contains(eff.Regions, p.Region)) {
			out = append(out, sdk.GPUPool{Type: p.Type, Region: p.Region, Free: p.Free, Total: p.Total})
		}
	}
	return out
}
