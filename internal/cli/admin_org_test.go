package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

func TestParseQuota(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want sdk.Quota
		err  string // start of the error, if any
	}{
		{in: "t4=8", want: sdk.Quota{GPUType: "t4", Max: 8}},
		{in: "a100@eu-west=2", want: sdk.Quota{GPUType: "a100", Region: "eu-west", Max: 2}},
		{in: " t4 @ local = 0", want: sdk.Quota{GPUType: "t4", Region: "local", Max: 0}},
		{in: "t4=-1", want: sdk.Quota{GPUType: "t4", Max: -1}},
		{in: "t4", err: `--quota "t4" has no maximum`},
		{in: "t4=", err: `--quota "t4=" needs a whole number`},
		{in: "t4=many", err: `--quota "t4=many" needs a whole number`},
		{in: "t4=-2", err: `--quota "t4=-2" needs a whole number`},
		{in: "=3", err: `--quota "" is not TYPE or TYPE@REGION`},
		{in: "t4@=3", err: `--quota "t4@" is not TYPE or TYPE@REGION`},
		{in: "t4@a@b=3", err: `--quota "t4@a@b" is not TYPE or TYPE@REGION`},
	} {
		got, err := parseQuota(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("parseQuota(%q) error = %v, want %q...", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("parseQuota(%q): %v", tc.in, err)
		case got != tc.want:
			t.Errorf("parseQuota(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestApplyQuotas(t *testing.T) {
	t.Parallel()
	start := []sdk.Quota{{GPUType: "t4", Max: 8}, {GPUType: "a100", Region: "eu-west", Max: 2}}
	for _, tc := range []struct {
		name        string
		set, remove []string
		want        string // the quotas as JSON, or the start of the error
	}{
		{"nothing", nil, nil,
			`[{"gpu_type":"t4","max":8},{"gpu_type":"a100","region":"eu-west","max":2}]`},
		{"change in place", []string{"t4=4"}, nil,
			`[{"gpu_type":"t4","max":4},{"gpu_type":"a100","region":"eu-west","max":2}]`},
		{"add at the end", []string{"t4@local=1"}, nil,
			`[{"gpu_type":"t4","max":8},{"gpu_type":"a100","region":"eu-west","max":2},{"gpu_type":"t4","region":"local","max":1}]`},
		{"-1 removes", []string{"t4=-1"}, nil,
			`[{"gpu_type":"a100","region":"eu-west","max":2}]`},
		{"remove flag", nil, []string{"a100@eu-west"},
			`[{"gpu_type":"t4","max":8}]`},
		{"remove all", []string{"t4=-1"}, []string{"a100@eu-west"},
			`[]`},
		{"remove a missing one", nil, []string{"a100"}, "there is no GPU quota for a100 to remove"},
		{"-1 on a missing one", []string{"v100=-1"}, nil, "there is no GPU quota for v100 to remove"},
		{"twice", []string{"t4=1", "t4=2"}, nil, "the GPU quota for t4 is given twice (--quota and --quota)"},
		{"set and removed", []string{"t4=1"}, []string{"t4"}, "the GPU quota for t4 is given twice (--quota-remove and --quota)"},
		{"bad remove", nil, []string{"t4=1"}, `--quota-remove "t4=1" is not TYPE or TYPE@REGION`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := applyQuotas(start, tc.set, tc.remove)
			if err != nil {
				if !strings.HasPrefix(err.Error(), tc.want) {
					t.Fatalf("error = %q, want it to start with %q", err, tc.want)
				}
				return
			}
			if got == nil {
				got = []sdk.Quota{}
			}
			b, _ := json.Marshal(got)
			if string(b) != tc.want {
				t.Fatalf("quotas =\n  %s\nwant\n  %s", b, tc.want)
			}
		})
	}
	if start[0].Max != 8 || len(start) != 2 {
		t.Fatalf("applyQuotas changed its input: %+v", start)
	}
}

func TestOrgChangeApply(t *testing.T) {
	t.Parallel()
	start := sdk.OrgPolicy{
		Defaults: sdk.ProjectSettings{MaxGPUsPerUser: ptrTo(2), ShellMode: ptrTo(sdk.ModeShared)},
		Locked:   []string{"egress", "shell_mode"},
		Quotas:   []sdk.Quota{{GPUType: "t4", Max: 8}},
	}
	for _, tc := range []struct {
		name string
		chg  orgChange
		want string // the policy as JSON, or the start of the error
	}{
		{"set a default", orgChange{settings: sdk.ProjectSettings{MaxGPUs: ptrTo(16)}},
			`{"defaults":{"max_gpus":16,"max_gpus_per_user":2,"shell_mode":"shared"},"locked":["egress","shell_mode"],"quotas":[{"gpu_type":"t4","max":8}]}`},
		{"unset a default", orgChange{unset: []string{"shell-mode"}},
			`{"defaults":{"max_gpus_per_user":2},"locked":["egress","shell_mode"],"quotas":[{"gpu_type":"t4","max":8}]}`},
		{"lock and unlock", orgChange{lock: []string{"max_gpus_per_user", "egress"}, unlock: []string{"shell_mode", "images"}},
			`{"defaults":{"max_gpus_per_user":2,"shell_mode":"shared"},"locked":["egress","max_gpus_per_user"],"quotas":[{"gpu_type":"t4","max":8}]}`},
		{"unlock all", orgChange{unlock: []string{"egress", "shell_mode"}},
			`{"defaults":{"max_gpus_per_user":2,"shell_mode":"shared"},"quotas":[{"gpu_type":"t4","max":8}]}`},
		{"quota", orgChange{quotas: []string{"t4=-1", "a100=1"}},
			`{"defaults":{"max_gpus_per_user":2,"shell_mode":"shared"},"locked":["egress","shell_mode"],"quotas":[{"gpu_type":"a100","max":1}]}`},
		{"require sso", orgChange{requireSSO: true, requireSSOSet: true},
			`{"defaults":{"max_gpus_per_user":2,"shell_mode":"shared"},"locked":["egress","shell_mode"],"quotas":[{"gpu_type":"t4","max":8}],"require_sso":true}`},
		{"lock and unlock one", orgChange{lock: []string{"egress"}, unlock: []string{"egress"}}, "egress is both locked"},
		{"unknown lock", orgChange{lock: []string{"bogus"}}, `--lock "bogus" names no setting`},
		{"set and unset", orgChange{settings: sdk.ProjectSettings{MaxGPUs: ptrTo(1)}, unset: []string{"max_gpus"}}, "max_gpus is both set"},
		{"invalid quota type", orgChange{quotas: []string{"T4=1"}}, "quota T4@=1 is invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := tc.chg.apply(start)
			if err != nil {
				if !strings.HasPrefix(err.Error(), tc.want) {
					t.Fatalf("error = %q, want it to start with %q", err, tc.want)
				}
				return
			}
			b, _ := json.Marshal(got)
			if string(b) != tc.want {
				t.Fatalf("policy =\n  %s\nwant\n  %s", b, tc.want)
			}
		})
	}
	if len(start.Locked) != 2 || *start.Defaults.ShellMode != sdk.ModeShared {
		t.Fatalf("apply changed its input: %+v", start)
	}
	// Another change keeps require_sso; --require-sso=false turns it off.
	sso := start
	sso.RequireSSO = true
	if got, err := (orgChange{lock: []string{"images"}}).apply(sso); err != nil || !got.RequireSSO {
		t.Errorf("a lock turned require_sso off: %+v, %v", got, err)
	}
	if got, err := (orgChange{requireSSOSet: true}).apply(sso); err != nil || got.RequireSSO {
		t.Errorf("--require-sso=false: %+v, %v", got, err)
	}
}

func TestOrgChangeEmpty(t *testing.T) {
	t.Parallel()
	if !(orgChange{}).empty() {
		t.Error("a zero change is not empty")
	}
	if (orgChange{quotaRemove: []string{"t4"}}).empty() {
		t.Error("a quota removal is empty")
	}
	if (orgChange{settings: sdk.ProjectSettings{GPUEnabled: ptrTo(false)}}).empty() {
		t.Error("a default is empty")
	}
}

// The org's host access survives updates that do not name it, and
// --allow-host-access replaces it (checked as the server would).
func TestOrgChangeHostAccess(t *testing.T) {
	t.Parallel()
	p := sdk.OrgPolicy{AllowHostAccess: []string{"169.254.169.254:80"}}
	got, err := orgChange{lock: []string{"egress"}}.apply(p)
	if err != nil || strings.Join(got.AllowHostAccess, ",") != "169.254.169.254:80" {
		t.Fatalf("unrelated change: host access %v, %v; want it kept", got.AllowHostAccess, err)
	}
	got, err = orgChange{hostAccess: []string{" 10.0.0.1:53 ", "0.0.0.0/0:8080"}, hostAccessSet: true}.apply(p)
	if err != nil || strings.Join(got.AllowHostAccess, ",") != "10.0.0.1:53,0.0.0.0/0:8080" {
		t.Fatalf("--allow-host-access: %v, %v", got.AllowHostAccess, err)
	}
	got, err = orgChange{hostAccess: []string{""}, hostAccessSet: true}.apply(p)
	if err != nil || len(got.AllowHostAccess) != 0 {
		t.Fatalf(`--allow-host-access "": %v, %v; want none`, got.AllowHostAccess, err)
	}
	if _, err := (orgChange{hostAccess: []string{"metadata.internal"}, hostAccessSet: true}).apply(p); err == nil || !strings.Contains(err.Error(), "allow_host_access") {
		t.Fatalf("a host name: %v, want an error naming allow_host_access", err)
	}
}

// --log-retention sets how long logs are kept, in Go's units or days;
// other changes keep it.
func TestOrgChangeLogRetention(t *testing.T) {
	t.Parallel()
	p := sdk.OrgPolicy{LogRetention: sdk.Duration(72 * time.Hour)}
	got, err := orgChange{lock: []string{"egress"}}.apply(p)
	if err != nil || got.LogRetention != p.LogRetention {
		t.Fatalf("unrelated change: retention %v, %v; want it kept", time.Duration(got.LogRetention), err)
	}
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "36h": 36 * time.Hour, "0": 0} {
		got, err := orgChange{logRetention: in, logRetentionSet: true}.apply(p)
		if err != nil || time.Duration(got.LogRetention) != want {
			t.Errorf("--log-retention %s: %v, %v; want %v", in, time.Duration(got.LogRetention), err, want)
		}
	}
	for _, in := range []string{"a week", "-1h", ""} {
		if _, err := (orgChange{logRetention: in, logRetentionSet: true}).apply(p); err == nil || !strings.HasPrefix(err.Error(), "--log-retention") {
			t.Errorf("--log-retention %q: %v; want an error naming the flag", in, err)
		}
	}
	for _, in := range []string{"30s", "400d", "9000h"} {
		want := "--log-retention " + in + " is out of range; give 0 (the default, 7 days) or a duration from 1m to 365 days"
		if _, err := (orgChange{logRetention: in, logRetentionSet: true}).apply(p); err == nil || err.Error() != want {
			t.Errorf("--log-retention %q: %v; want %q", in, err, want)
		}
	}
	for d, want := range map[time.Duration]string{36 * time.Hour: "36h", 90 * time.Minute: "1h30m", time.Minute: "1m", 10 * time.Second: "10s", 0: "0s"} {
		if got := inDays(d); got != want {
			t.Errorf("inDays(%s) = %q; want %q", d, got, want)
		}
	}
	if (orgChange{logRetentionSet: true}).empty() {
		t.Error("a retention change is empty")
	}
	if got := inDays(sdk.DefaultLogRetention); got != "7 days" {
		t.Errorf("the default retention reads %q", got)
	}
}
