// Package policy holds the governance rules over the settings of
// sdk.ProjectSettings: the organisation policy gives their defaults and
// decides which ones projects may change (the Dev Center project policy: a
// default value and a modifiable flag per setting), and Resolve returns
// what applies to a project and where each value comes from.
package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// Names lists the settings in the order they are shown, by the key used in
// the API, the CLI and the organisation's locked list.
var Names = []string{
	"gpu_enabled", "max_gpus", "max_gpus_per_user", "gpu_types", "regions",
	"default_image", "images", "shell_mode", "idle_timeout", "max_lifetime",
	"detach_grace", "egress", "budget", "workspace", "log_limit_bytes",
}

// BuiltIn is what applies where neither the organisation nor the project
// says anything.
func BuiltIn() sdk.ProjectSettings {
	return sdk.ProjectSettings{
		GPUEnabled:     ptr(true),
		MaxGPUs:        ptr(0),
		MaxGPUsPerUser: ptr(0),
		GPUTypes:       ptr([]string{}),
		Regions:        ptr([]string{}),
		DefaultImage:   ptr(""),
		Images:         ptr([]string{}),
		ShellMode:      ptr(sdk.ModeDedicated),
		IdleTimeout:    ptr(sdk.Duration(0)),
		MaxLifetime:    ptr(sdk.Duration(0)),
		DetachGrace:    ptr(sdk.Duration(60 * time.Second)),
		Egress:         &sdk.Egress{Mode: sdk.EgressAll},
		Budget:         &sdk.Budget{Unit: sdk.BudgetCurrency, Action: sdk.BudgetRefuse},
		Workspace:      &sdk.Workspace{},
		LogLimitBytes:  ptr(DefaultLogLimit),
	}
}

// The bounds of a project's log_limit_bytes: the output each detached run
// keeps in the server's store.
const (
	DefaultLogLimit int64 = 64 << 20
	MinLogLimit     int64 = 64 << 10
	MaxLogLimit     int64 = 4 << 30
)

func ptr[T any](v T) *T { return &v }

// Effective is the settings that apply to a project, every one decided.
type Effective struct {
	GPUEnabled     bool
	MaxGPUs        int // 0: no limit
	MaxGPUsPerUser int // 0: no limit
	GPUTypes       []string
	Regions        []string
	DefaultImage   string
	Images         []string
	ShellMode      string
	IdleTimeout    time.Duration // 0: none
	MaxLifetime    time.Duration // 0: none
	DetachGrace    time.Duration
	Egress         sdk.Egress
	Budget         sdk.Budget // Amount 0: none
	Workspace      sdk.Workspace
	LogLimitBytes  int64
	// Settings is the same as settings that are all set, for display.
	Settings sdk.ProjectSettings
	// Source says, per setting name, where its value comes from:
	// "project", "org" or "default".
	Source map[string]string
}

// field is one setting's value in each layer, as pointers into them.
type field struct {
	name                 string
	own, orgDef, builtIn any
	set                  func(any)
}

// fields pairs up one setting across the layers and the effective result.
func fields(own, org, base *sdk.ProjectSettings, out *sdk.ProjectSettings) []field {
	return []field{
		{"gpu_enabled", own.GPUEnabled, org.GPUEnabled, base.GPUEnabled, func(v any) { out.GPUEnabled = v.(*bool) }},
		{"max_gpus", own.MaxGPUs, org.MaxGPUs, base.MaxGPUs, func(v any) { out.MaxGPUs = v.(*int) }},
		{"max_gpus_per_user", own.MaxGPUsPerUser, org.MaxGPUsPerUser, base.MaxGPUsPerUser, func(v any) { out.MaxGPUsPerUser = v.(*int) }},
		{"gpu_types", own.GPUTypes, org.GPUTypes, base.GPUTypes, func(v any) { out.GPUTypes = v.(*[]string) }},
		{"regions", own.Regions, org.Regions, base.Regions, func(v any) { out.Regions = v.(*[]string) }},
		{"default_image", own.DefaultImage, org.DefaultImage, base.DefaultImage, func(v any) { out.DefaultImage = v.(*string) }},
		{"images", own.Images, org.Images, base.Images, func(v any) { out.Images = v.(*[]string) }},
		{"shell_mode", own.ShellMode, org.ShellMode, base.ShellMode, func(v any) { out.ShellMode = v.(*string) }},
		{"idle_timeout", own.IdleTimeout, org.IdleTimeout, base.IdleTimeout, func(v any) { out.IdleTimeout = v.(*sdk.Duration) }},
		{"max_lifetime", own.MaxLifetime, org.MaxLifetime, base.MaxLifetime, func(v any) { out.MaxLifetime = v.(*sdk.Duration) }},
		{"detach_grace", own.DetachGrace, org.DetachGrace, base.DetachGrace, func(v any) { out.DetachGrace = v.(*sdk.Duration) }},
		{"egress", own.Egress, org.Egress, base.Egress, func(v any) { out.Egress = v.(*sdk.Egress) }},
		{"budget", own.Budget, org.Budget, base.Budget, func(v any) { out.Budget = v.(*sdk.Budget) }},
		{"workspace", own.Workspace, org.Workspace, base.Workspace, func(v any) { out.Workspace = v.(*sdk.Workspace) }},
		{"log_limit_bytes", own.LogLimitBytes, org.LogLimitBytes, base.LogLimitBytes, func(v any) { out.LogLimitBytes = v.(*int64) }},
	}
}

// Resolve computes a project's effective settings: its own value where it
// has one and the organisation does not lock the setting, else the
// organisation's default, else the built-in one.
func Resolve(org sdk.OrgPolicy, own sdk.ProjectSettings) Effective {
	base := BuiltIn()
	var s sdk.ProjectSettings
	src := map[string]string{}
	for _, f := range fields(&own, &org.Defaults, &base, &s) {
		switch {
		case !isNil(f.own) && !slices.Contains(org.Locked, f.name):
			f.set(f.own)
			src[f.name] = "project"
		case !isNil(f.orgDef):
			f.set(f.orgDef)
			src[f.name] = "org"
		default:
			f.set(f.builtIn)
			src[f.name] = "default"
		}
	}
	egress := *s.Egress
	// Host access is the organisation's alone: whatever a layer holds is
	// replaced by the organisation's allow_host_access.
	egress.HostAccess = slices.Clone(org.AllowHostAccess)
	return Effective{
		GPUEnabled: *s.GPUEnabled, MaxGPUs: *s.MaxGPUs, MaxGPUsPerUser: *s.MaxGPUsPerUser,
		GPUTypes: *s.GPUTypes, Regions: *s.Regions, DefaultImage: *s.DefaultImage, Images: *s.Images,
		ShellMode: *s.ShellMode, IdleTimeout: time.Duration(*s.IdleTimeout),
		MaxLifetime: time.Duration(*s.MaxLifetime), DetachGrace: time.Duration(*s.DetachGrace),
		Egress: egress, Budget: *s.Budget, Workspace: *s.Workspace, LogLimitBytes: *s.LogLimitBytes, Settings: s, Source: src,
	}
}

// Describe returns the effective settings with their sources, by name.
func (e Effective) Describe(org sdk.OrgPolicy) map[string]sdk.Setting {
	out := map[string]sdk.Setting{}
	var none sdk.ProjectSettings
	for _, f := range fields(&e.Settings, &none, &none, &none) {
		out[f.name] = sdk.Setting{Value: f.own, Source: e.Source[f.name], Locked: slices.Contains(org.Locked, f.name)}
	}
	return out
}

// isNil reports whether the typed pointer held in v is nil.
func isNil(v any) bool {
	switch p := v.(type) {
	case *bool:
		return p == nil
	case *int:
		return p == nil
	case *int64:
		return p == nil
	case *string:
		return p == nil
	case *[]string:
		return p == nil
	case *sdk.Duration:
		return p == nil
	case *sdk.Egress:
		return p == nil
	case *sdk.Budget:
		return p == nil
	case *sdk.Workspace:
		return p == nil
	}
	return v == nil
}

// SetIn returns the names of the settings that s sets.
func SetIn(s sdk.ProjectSettings) []string {
	var none sdk.ProjectSettings
	var names []string
	for _, f := range fields(&s, &none, &none, &none) {
		if !isNil(f.own) {
			names = append(names, f.name)
		}
	}
	return names
}

// Merge returns s with every setting that u sets taken from u.
func Merge(s, u sdk.ProjectSettings) sdk.ProjectSettings {
	out := s
	var none sdk.ProjectSettings
	for _, f := range fields(&u, &none, &none, &out) {
		if !isNil(f.own) {
			f.set(f.own)
		}
	}
	return out
}

// Unset returns s without the named settings, so they inherit again.
func Unset(s sdk.ProjectSettings, names []string) (sdk.ProjectSettings, error) {
	var none sdk.ProjectSettings
	for _, name := range names {
		if !slices.Contains(Names, name) {
			return s, fmt.Errorf("setting %q is unknown; settings are %s", name, strings.Join(Names, ", "))
		}
	}
	out := s
	for _, f := range fields(&none, &none, &none, &out) {
		if slices.Contains(names, f.name) {
			f.set(f.own) // a typed nil
		}
	}
	return out, nil
}

// LockedIn returns the first setting u sets that the organisation locks.
func LockedIn(org sdk.OrgPolicy, u sdk.ProjectSettings) (string, bool) {
	for _, name := range SetIn(u) {
		if slices.Contains(org.Locked, name) {
			return name, true
		}
	}
	return "", false
}

var (
	shortName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	hostName  = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?$`)
)

// Validate checks every setting s sets, returning one sentence that names
// the setting and what would be valid.
func Validate(s sdk.ProjectSettings) error {
	dur := func(d *sdk.Duration, max time.Duration) bool {
		return d != nil && (*d < 0 || time.Duration(*d) > max)
	}
	for _, c := range []struct {
		name string
		bad  bool
		hint string
	}{
		{"max_gpus", s.MaxGPUs != nil && *s.MaxGPUs < 0, "a count of 0 (no limit) or more"},
		{"max_gpus_per_user", s.MaxGPUsPerUser != nil && *s.MaxGPUsPerUser < 0, "a count of 0 (no limit) or more"},
		{"shell_mode", s.ShellMode != nil && !slices.Contains([]string{sdk.ModeDedicated, sdk.ModeShared, sdk.ModeSpillover}, *s.ShellMode), "dedicated, shared or spillover"},
		{"idle_timeout", dur(s.IdleTimeout, 7*24*time.Hour), "a duration from 0s (none) to 168h"},
		{"max_lifetime", dur(s.MaxLifetime, 31*24*time.Hour), "a duration from 0s (none) to 744h"},
		{"detach_grace", dur(s.DetachGrace, 24*time.Hour), "a duration from 0s to 24h"},
	} {
		if c.bad {
			return fmt.Errorf("%s is out of range; give %s", c.name, c.hint)
		}
	}
	for _, l := range []struct {
		name string
		list *[]string
	}{{"gpu_types", s.GPUTypes}, {"regions", s.Regions}} {
		if l.list == nil {
			continue
		}
		for _, v := range *l.list {
			if !shortName.MatchString(v) {
				return fmt.Errorf("%s entry %q is not a valid name; use lower-case letters, digits and dashes, e.g. t4", l.name, v)
			}
		}
	}
	if s.Images != nil {
		for _, img := range *s.Images {
			if strings.TrimSpace(img) == "" || strings.ContainsAny(img, " \t\n") {
				return fmt.Errorf("images entry %q is not an image name or reference", img)
			}
		}
	}
	if s.DefaultImage != nil && strings.ContainsAny(*s.DefaultImage, " \t\n") {
		return fmt.Errorf("default_image %q is not an image name or reference", *s.DefaultImage)
	}
	if s.Budget != nil {
		if err := ValidateBudget(*s.Budget); err != nil {
			return err
		}
	}
	if s.LogLimitBytes != nil && (*s.LogLimitBytes < MinLogLimit || *s.LogLimitBytes > MaxLogLimit) {
		return fmt.Errorf("log_limit_bytes %d is out of range; give a size from 64KiB to 4GiB", *s.LogLimitBytes)
	}
	if s.Workspace != nil && s.Workspace.LimitBytes < 0 {
		return fmt.Errorf("workspace limit %d is negative; give 0 (no limit) or a size", s.Workspace.LimitBytes)
	}
	if s.Egress != nil {
		if len(s.Egress.HostAccess) > 0 {
			return fmt.Errorf("egress host_access is not a project setting; the organisation opens host services with allow_host_access in its policy")
		}
		return ValidateEgress(*s.Egress)
	}
	return nil
}

// ValidateBudget checks a budget.
func ValidateBudget(b sdk.Budget) error {
	if b.Amount < 0 {
		return fmt.Errorf("budget amount %g is negative; give 0 (no budget) or more", b.Amount)
	}
	if b.Unit != sdk.BudgetCurrency && b.Unit != sdk.BudgetGPUHours {
		return fmt.Errorf("budget unit %q is not currency or gpu-hours", b.Unit)
	}
	if b.Action != "" && b.Action != sdk.BudgetRefuse && b.Action != sdk.BudgetStop {
		return fmt.Errorf("budget action %q is not refuse or stop", b.Action)
	}
	for _, t := range b.Thresholds {
		if t < 1 || t > 1000 {
			return fmt.Errorf("budget threshold %d%% is out of range; give percentages from 1 to 1000, e.g. 80,100", t)
		}
	}
	return nil
}

// ValidateEgress checks an egress policy.
func ValidateEgress(e sdk.Egress) error {
	switch e.Mode {
	case sdk.EgressNone, sdk.EgressAll:
		if len(e.Allow) > 0 {
			return fmt.Errorf("egress %s takes no destinations; use mode allow-list to list them", e.Mode)
		}
		return ValidateHostAccess(e.HostAccess)
	case sdk.EgressAllowList:
		if len(e.Allow) == 0 {
			return fmt.Errorf("egress allow-list needs at least one destination, e.g. 10.0.0.0/8 or pypi.org:443")
		}
		for _, dest := range e.Allow {
			if err := validateDestination(dest); err != nil {
				return err
			}
		}
		return ValidateHostAccess(e.HostAccess)
	default:
		return fmt.Errorf("egress mode %q is not one of none, allow-list, all", e.Mode)
	}
}

// ValidateHostAccess checks the organisation's allow_host_access entries:
// CIDRs or IP addresses, each with an optional :port; no host names, since
// what they open is the host's own addresses.
func ValidateHostAccess(entries []string) error {
	for _, entry := range entries {
		host, port := entry, ""
		if ap, err := netip.ParseAddrPort(entry); err == nil {
			host, port = ap.Addr().String(), strconv.Itoa(int(ap.Port()))
		} else if i := strings.LastIndexByte(entry, ':'); i > 0 && !strings.Contains(entry[:i], ":") {
			host, port = entry[:i], entry[i+1:]
		}
		if p, err := strconv.Atoi(port); port != "" && (err != nil || p < 1 || p > 65535) {
			return fmt.Errorf("allow_host_access entry %q has an invalid port; use 1 to 65535", entry)
		}
		if _, err := netip.ParsePrefix(host); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			continue
		}
		return fmt.Errorf("allow_host_access entry %q is not a CIDR or IP address (optionally with :port), e.g. 169.254.169.254:80 or 0.0.0.0/0:8080", entry)
	}
	return nil
}

// validateDestination accepts a CIDR, an IP address or a host name, each
// with an optional :port ([v6]:port for IPv6 addresses).
func validateDestination(dest string) error {
	host, port := dest, ""
	if ap, err := netip.ParseAddrPort(dest); err == nil {
		host, port = ap.Addr().String(), strconv.Itoa(int(ap.Port()))
	} else if i := strings.LastIndexByte(dest, ':'); i > 0 && !strings.Contains(dest[:i], ":") {
		host, port = dest[:i], dest[i+1:]
	}
	if port != "" {
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("egress destination %q has an invalid port; use 1 to 65535", dest)
		}
	}
	if _, err := netip.ParsePrefix(host); err == nil {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if hostName.MatchString(host) {
		return nil
	}
	return fmt.Errorf("egress destination %q is not a CIDR, IP address or host name (optionally with :port)", dest)
}

// The bounds of the organisation's log_retention.
const (
	MinLogRetention = time.Minute
	MaxLogRetention = 365 * 24 * time.Hour
)

// LogRetention is how long the organisation keeps detached runs' logs
// after they end.
func LogRetention(o sdk.OrgPolicy) time.Duration {
	if o.LogRetention == 0 {
		return sdk.DefaultLogRetention
	}
	return time.Duration(o.LogRetention)
}

// ValidateOrg checks an organisation policy.
func ValidateOrg(o sdk.OrgPolicy) error {
	if err := Validate(o.Defaults); err != nil {
		return fmt.Errorf("org default %w", err)
	}
	for _, name := range o.Locked {
		if !slices.Contains(Names, name) {
			return fmt.Errorf("locked setting %q is unknown; settings are %s", name, strings.Join(Names, ", "))
		}
	}
	if err := ValidateHostAccess(o.AllowHostAccess); err != nil {
		return err
	}
	if r := time.Duration(o.LogRetention); r != 0 && (r < MinLogRetention || r > MaxLogRetention) {
		return fmt.Errorf("log_retention %s is out of range; give 0 (the default, %s) or a duration from 1m to 8760h", r, sdk.DefaultLogRetention)
	}
	for _, r := range o.Registries {
		if r == "" || strings.ContainsAny(r, " \t\n@") {
			return fmt.Errorf("registry %q is not a registry host (and optional repository prefix) such as ghcr.io or docker.io/acme", r)
		}
	}
	seen := map[string]bool{}
	for _, q := range o.Quotas {
		if !shortName.MatchString(q.GPUType) || (q.Region != "" && !shortName.MatchString(q.Region)) || q.Max < 0 {
			return fmt.Errorf("quota %s@%s=%d is invalid; give a GPU type, an optional region and a max of 0 or more", q.GPUType, q.Region, q.Max)
		}
		key := q.GPUType + "@" + q.Region
		if seen[key] {
			return fmt.Errorf("quota for %s is given twice; give each GPU type and region once", key)
		}
		seen[key] = true
	}
	return nil
}
