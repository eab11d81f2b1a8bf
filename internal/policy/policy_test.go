package policy

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	org := sdk.OrgPolicy{
		Defaults: sdk.ProjectSettings{MaxGPUs: ptr(8), IdleTimeout: ptr(sdk.Duration(30 * time.Minute)), ShellMode: ptr(sdk.ModeShared)},
		Locked:   []string{"idle_timeout"},
	}
	own := sdk.ProjectSettings{MaxGPUs: ptr(2), IdleTimeout: ptr(sdk.Duration(time.Hour)), GPUTypes: ptr([]string{"t4"})}
	e := Resolve(org, own)
	if e.MaxGPUs != 2 || e.Source["max_gpus"] != "project" {
		t.Errorf("max_gpus = %d from %s, want the project's 2", e.MaxGPUs, e.Source["max_gpus"])
	}
	if e.IdleTimeout != 30*time.Minute || e.Source["idle_timeout"] != "org" {
		t.Errorf("locked idle_timeout = %s from %s, want the org's 30m", e.IdleTimeout, e.Source["idle_timeout"])
	}
	if e.ShellMode != sdk.ModeShared || e.Source["shell_mode"] != "org" {
		t.Errorf("shell_mode = %s from %s", e.ShellMode, e.Source["shell_mode"])
	}
	if e.DetachGrace != time.Minute || e.Source["detach_grace"] != "default" || !e.GPUEnabled {
		t.Errorf("built-in defaults not applied: %+v", e)
	}
	if len(e.GPUTypes) != 1 || e.Egress.Mode != sdk.EgressAll {
		t.Errorf("gpu types %v, egress %+v", e.GPUTypes, e.Egress)
	}
	desc := e.Describe(org)
	if len(desc) != len(Names) || !desc["idle_timeout"].Locked || desc["max_gpus"].Source != "project" {
		t.Errorf("Describe = %+v", desc)
	}
	if name, ok := LockedIn(org, own); !ok || name != "idle_timeout" {
		t.Errorf("LockedIn = %q %v", name, ok)
	}
}

func TestMergeUnsetSetIn(t *testing.T) {
	t.Parallel()
	s := Merge(sdk.ProjectSettings{MaxGPUs: ptr(1)}, sdk.ProjectSettings{MaxGPUsPerUser: ptr(1), MaxGPUs: ptr(3)})
	if *s.MaxGPUs != 3 || *s.MaxGPUsPerUser != 1 {
		t.Fatalf("Merge = %+v", s)
	}
	if got := strings.Join(SetIn(s), ","); got != "max_gpus,max_gpus_per_user" {
		t.Fatalf("SetIn = %s", got)
	}
	s, err := Unset(s, []string{"max_gpus"})
	if err != nil || s.MaxGPUs != nil || s.MaxGPUsPerUser == nil {
		t.Fatalf("Unset = %+v, %v", s, err)
	}
	if _, err := Unset(s, []string{"nope"}); err == nil {
		t.Fatal("Unset of an unknown setting succeeded")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	good := []sdk.ProjectSettings{
		{},
		{MaxGPUs: ptr(0), ShellMode: ptr(sdk.ModeSpillover), GPUTypes: ptr([]string{"t4", "a100"})},
		{Egress: &sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"10.0.0.0/8", "pypi.org:443", "1.2.3.4", "[::1]:22", "fd00::/8"}}},
		{Egress: &sdk.Egress{Mode: sdk.EgressNone}},
	}
	for _, s := range good {
		if err := Validate(s); err != nil {
			t.Errorf("Validate(%+v): %v", s, err)
		}
	}
	bad := map[string]sdk.ProjectSettings{
		"max_gpus is out of range":       {MaxGPUs: ptr(-1)},
		"shell_mode is out of range":     {ShellMode: ptr("party")},
		"idle_timeout is out of range":   {IdleTimeout: ptr(sdk.Duration(-time.Second))},
		"gpu_types entry":                {GPUTypes: ptr([]string{"T4"})},
		"needs at least one destination": {Egress: &sdk.Egress{Mode: sdk.EgressAllowList}},
		"takes no destinations":          {Egress: &sdk.Egress{Mode: sdk.EgressNone, Allow: []string{"1.2.3.4"}}},
		"invalid port":                   {Egress: &sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"pypi.org:99999"}}},
		"not a CIDR":                     {Egress: &sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{"bad host!"}}},
		"egress mode":                    {Egress: &sdk.Egress{Mode: "some"}},
	}
	for want, s := range bad {
		if err := Validate(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%+v) = %v, want an error containing %q", s, err, want)
		}
	}
	if err := ValidateOrg(sdk.OrgPolicy{Locked: []string{"max_gpu"}}); err == nil {
		t.Error("unknown locked setting accepted")
	}
	if err := ValidateOrg(sdk.OrgPolicy{Quotas: []sdk.Quota{{GPUType: "t4", Max: 1}, {GPUType: "t4", Max: 2}}}); err == nil {
		t.Error("duplicate quota accepted")
	}
}

// Settings travel as JSON (API and store): unset stays unset, empty lists
// stay empty, durations read as strings.
func TestSettingsJSON(t *testing.T) {
	t.Parallel()
	in := sdk.ProjectSettings{GPUTypes: ptr([]string{}), DetachGrace: ptr(sdk.Duration(90 * time.Second))}
	b, _ := json.Marshal(in)
	if string(b) != `{"gpu_types":[],"detach_grace":"1m30s"}` {
		t.Fatalf("JSON = %s", b)
	}
	var out sdk.ProjectSettings
	if err := json.Unmarshal(b, &out); err != nil || out.GPUTypes == nil || len(*out.GPUTypes) != 0 || out.MaxGPUs != nil {
		t.Fatalf("round trip = %+v, %v", out, err)
	}
}

func FuzzValidateEgress(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "pypi.org:443", "[::1]:22", ":", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dest string) {
		_ = ValidateEgress(sdk.Egress{Mode: sdk.EgressAllowList, Allow: []string{dest}})
	})
}

// Host access is the organisation's: Resolve copies allow_host_access into
// every project's effective egress, a project's own value is refused, and
// the entries are addresses, never host names.
func TestHostAccess(t *testing.T) {
	t.Parallel()
	org := sdk.OrgPolicy{AllowHostAccess: []string{"169.254.169.254:80", "10.0.0.1"}}
	own := sdk.ProjectSettings{Egress: &sdk.Egress{Mode: sdk.EgressAll, HostAccess: []string{"0.0.0.0/0"}}}
	if err := ValidateOrg(org); err != nil {
		t.Fatalf("ValidateOrg: %v", err)
	}
	if e := Resolve(org, own); strings.Join(e.Egress.HostAccess, ",") != "169.254.169.254:80,10.0.0.1" {
		t.Errorf("effective host access %v, want the org's", e.Egress.HostAccess)
	}
	if e := Resolve(sdk.OrgPolicy{}, own); len(e.Egress.HostAccess) != 0 {
		t.Errorf("effective host access %v without an org setting, want none", e.Egress.HostAccess)
	}
	if e := Resolve(org, sdk.ProjectSettings{}); e.Settings.Egress.HostAccess != nil || BuiltIn().Egress.HostAccess != nil {
		t.Error("Resolve changed the built-in egress setting")
	}
	if err := Validate(own); err == nil || !strings.Contains(err.Error(), "allow_host_access") {
		t.Errorf("project egress with host_access: %v, want an error naming allow_host_access", err)
	}
	if err := ValidateOrg(sdk.OrgPolicy{Defaults: own}); err == nil {
		t.Error("org default egress with host_access accepted")
	}
	for _, bad := range []string{"metadata.internal", "169.254.169.254:0", "10.0.0.1:http", ""} {
		if err := ValidateOrg(sdk.OrgPolicy{AllowHostAccess: []string{bad}}); err == nil || !strings.Contains(err.Error(), "allow_host_access") {
			t.Errorf("allow_host_access %q: %v, want an error", bad, err)
		}
	}
	// The effective egress, host access included, is what the runtime checks.
	if err := ValidateEgress(Resolve(org, sdk.ProjectSettings{}).Egress); err != nil {
		t.Errorf("ValidateEgress(effective): %v", err)
	}
}

// A project's log limit is a setting like the others (default 64 MiB, org
// default and lock apply, 64 KiB to 4 GiB); the organisation's log
// retention is 0 (the default) or 1m to 8760h.
func TestLogLimitAndRetention(t *testing.T) {
	t.Parallel()
	if e := Resolve(sdk.OrgPolicy{}, sdk.ProjectSettings{}); e.LogLimitBytes != DefaultLogLimit || e.Source["log_limit_bytes"] != "default" {
		t.Errorf("built-in log limit %d from %s, want %d", e.LogLimitBytes, e.Source["log_limit_bytes"], DefaultLogLimit)
	}
	org := sdk.OrgPolicy{Defaults: sdk.ProjectSettings{LogLimitBytes: ptr(int64(1 << 20))}, Locked: []string{"log_limit_bytes"}}
	if e := Resolve(org, sdk.ProjectSettings{LogLimitBytes: ptr(int64(2 << 20))}); e.LogLimitBytes != 1<<20 || e.Source["log_limit_bytes"] != "org" {
		t.Errorf("locked log limit %d from %s, want the org's 1MiB", e.LogLimitBytes, e.Source["log_limit_bytes"])
	}
	if e := Resolve(sdk.OrgPolicy{}, sdk.ProjectSettings{LogLimitBytes: ptr(int64(2 << 20))}); e.LogLimitBytes != 2<<20 {
		t.Errorf("project log limit %d, want 2MiB", e.LogLimitBytes)
	}
	for _, n := range []int64{MinLogLimit, MaxLogLimit} {
		if err := Validate(sdk.ProjectSettings{LogLimitBytes: ptr(n)}); err != nil {
			t.Errorf("log limit %d: %v", n, err)
		}
	}
	for _, n := range []int64{0, MinLogLimit - 1, MaxLogLimit + 1} {
		if err := Validate(sdk.ProjectSettings{LogLimitBytes: ptr(n)}); err == nil || !strings.Contains(err.Error(), "log_limit_bytes") {
			t.Errorf("log limit %d: %v, want an error naming log_limit_bytes", n, err)
		}
	}
	for _, d := range []time.Duration{0, time.Minute, 8760 * time.Hour} {
		if err := ValidateOrg(sdk.OrgPolicy{LogRetention: sdk.Duration(d)}); err != nil {
			t.Errorf("log retention %s: %v", d, err)
		}
	}
	for _, d := range []time.Duration{-time.Hour, time.Second, 8761 * time.Hour} {
		if err := ValidateOrg(sdk.OrgPolicy{LogRetention: sdk.Duration(d)}); err == nil || !strings.Contains(err.Error(), "log_retention") {
			t.Errorf("log retention %s: %v, want an error naming log_retention", d, err)
		}
	}
	if LogRetention(sdk.OrgPolicy{}) != sdk.DefaultLogRetention || LogRetention(sdk.OrgPolicy{LogRetention: sdk.Duration(time.Hour)}) != time.Hour {
		t.Error("LogRetention does not default to sdk.DefaultLogRetention")
	}
}
