package admission

import (
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/sdk"
)

func ptr[T any](v T) *T { return &v }

func effective(s sdk.ProjectSettings) policy.Effective {
	return policy.Resolve(sdk.OrgPolicy{}, s)
}

func TestDecide(t *testing.T) {
	t.Parallel()
	pools := []Pool{
		{Type: "t4", Region: "local", Free: 0, Total: 4},
		{Type: "a100", Region: "local", Free: 1, Total: 2},
		{Type: "a100", Region: "west", Free: 2, Total: 2},
	}
	open := effective(sdk.ProjectSettings{})
	base := Snapshot{Policy: open, Pools: pools}
	with := func(f func(*Snapshot)) Snapshot {
		s := base
		f(&s)
		return s
	}
	req := Request{Project: "p", User: "u"}
	cases := []struct {
		name    string
		req     Request
		snap    Snapshot
		outcome Outcome
		where   string // type@region for Admit, session for Join
		reason  string
		queue   bool
		msg     string
	}{
		{"disabled", req, with(func(s *Snapshot) { s.Policy = effective(sdk.ProjectSettings{GPUEnabled: ptr(false)}) }),
			Refuse, "", ReasonGPUDisabled, false, "GPU sessions are disabled in project p"},
		{"any picks most free", req, base, Admit, "a100@west", "", false, ""},
		{"type and region", Request{Project: "p", GPUType: "a100", Region: "local"}, base, Admit, "a100@local", "", false, ""},
		{"type not allowed", Request{Project: "p", GPUType: "a100"}, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{GPUTypes: ptr([]string{"t4"})})
		}), Refuse, "", ReasonTypeForbidden, false, "GPU type a100 is not allowed in project p; allowed: t4"},
		{"region not allowed", Request{Project: "p", Region: "west"}, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{Regions: ptr([]string{"local"})})
		}), Refuse, "", ReasonTypeForbidden, false, "region west is not allowed in project p; allowed: local"},
		{"allowed types narrow the choice", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{Regions: ptr([]string{"local"})})
		}), Admit, "a100@local", "", false, ""},
		{"unknown type", Request{Project: "p", GPUType: "h100"}, base, Refuse, "", ReasonUnknownGPU, false, "choose one of: t4 in local, a100 in local, a100 in west"},
		{"image not allowed", Request{Project: "p", Image: "evil"}, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{Images: ptr([]string{"py", "torch"})})
		}), Refuse, "", ReasonImage, false, "image evil is not allowed in project p; allowed: py, torch"},
		{"default image checked too", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{Images: ptr([]string{"py"}), DefaultImage: ptr("torch")})
		}), Refuse, "", ReasonImage, false, "image torch"},
		{"budget", req, with(func(s *Snapshot) { s.Budget = "project p has used 100% of its budget" }),
			Refuse, "", ReasonBudget, false, "100% of its budget"},
		{"per-user cap", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{MaxGPUsPerUser: ptr(2)})
			s.UserGPUs, s.ProjectGPUs = 2, 2
		}), Refuse, "", ReasonUserCap, true, "you use 2 of your 2 GPUs in project p"},
		{"project cap", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{MaxGPUs: ptr(4)})
			s.ProjectGPUs = 4
		}), Refuse, "", ReasonProjectCap, true, "project p uses 4 of its 4 GPUs"},
		{"org quota", Request{Project: "p", GPUType: "a100"}, with(func(s *Snapshot) {
			s.Quotas = []sdk.Quota{{GPUType: "a100", Max: 1}}
			s.InUse = map[string]map[string]int{"a100": {"local": 1}}
		}), Refuse, "", ReasonQuota, true, "the organisation's a100 quota is used up: 1 of 1 GPUs in use"},
		{"regional quota leaves the other region", Request{Project: "p", GPUType: "a100"}, with(func(s *Snapshot) {
			s.Quotas = []sdk.Quota{{GPUType: "a100", Region: "west", Max: 0}}
		}), Admit, "a100@local", "", false, ""},
		{"capacity", Request{Project: "p", GPUType: "t4"}, base, Refuse, "", ReasonCapacity, true, "all 4 t4 GPUs are in use"},
		{"shared joins the least-loaded session", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{ShellMode: ptr(sdk.ModeShared)})
			s.UserSessions = []UserSession{{ID: "a", GPUs: 1, Attachments: 2}, {ID: "b", GPUs: 1, Attachments: 1}}
		}), Join, "b", "", false, ""},
		{"shared without a session starts one", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{ShellMode: ptr(sdk.ModeShared)})
		}), Admit, "a100@west", "", false, ""},
		{"spillover starts dedicated below the cap", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{ShellMode: ptr(sdk.ModeSpillover), MaxGPUsPerUser: ptr(2)})
			s.UserGPUs = 1
			s.UserSessions = []UserSession{{ID: "a", GPUs: 1, Attachments: 1}}
		}), Admit, "a100@west", "", false, ""},
		{"spillover joins at the cap", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{ShellMode: ptr(sdk.ModeSpillover), MaxGPUsPerUser: ptr(2)})
			s.UserGPUs = 2
			s.UserSessions = []UserSession{{ID: "a", GPUs: 1, Attachments: 3}, {ID: "b", GPUs: 1, Attachments: 1}}
		}), Join, "b", "", false, ""},
		{"dedicated never joins", req, with(func(s *Snapshot) {
			s.Policy = effective(sdk.ProjectSettings{MaxGPUsPerUser: ptr(1)})
			s.UserGPUs = 1
			s.UserSessions = []UserSession{{ID: "a", GPUs: 1, Attachments: 1}}
		}), Refuse, "", ReasonUserCap, true, "you use 1 of your 1 GPUs"},
	}
	for _, c := range cases {
		d := Decide(c.req, c.snap)
		where := ""
		switch d.Outcome {
		case Admit:
			where = d.GPUType + "@" + d.Region
		case Join:
			where = d.Session
		}
		if d.Outcome != c.outcome || where != c.where || d.Reason != c.reason || d.Queueable != c.queue || !strings.Contains(d.Message, c.msg) {
			t.Errorf("%s: got %+v", c.name, d)
		}
	}
}

// The checks run in DESIGN.md's order: with every limit hit at once, the
// refusal names the first.
func TestDecideOrder(t *testing.T) {
	t.Parallel()
	snap := Snapshot{
		Policy: effective(sdk.ProjectSettings{MaxGPUs: ptr(1), MaxGPUsPerUser: ptr(1), Images: ptr([]string{"ok"})}),
		Pools:  []Pool{{Type: "t4", Region: "local", Free: 0, Total: 1}},
		Quotas: []sdk.Quota{{GPUType: "t4", Max: 0}}, UserGPUs: 1, ProjectGPUs: 1, Budget: "over budget",
	}
	order := []string{ReasonImage, ReasonBudget, ReasonUserCap, ReasonProjectCap, ReasonQuota, ReasonCapacity}
	req := Request{Project: "p", Image: "bad"}
	for i, want := range order {
		d := Decide(req, snap)
		if d.Reason != want {
			t.Fatalf("step %d: reason %s, want %s", i, d.Reason, want)
		}
		switch want { // lift this limit for the next step
		case ReasonImage:
			req.Image = "ok"
		case ReasonBudget:
			snap.Budget = ""
		case ReasonUserCap:
			snap.UserGPUs = 0
		case ReasonProjectCap:
			snap.ProjectGPUs = 0
		case ReasonQuota:
			snap.Quotas = nil
		}
	}
}
