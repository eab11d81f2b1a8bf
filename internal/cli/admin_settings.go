package cli

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/policy"
	"github.com/devgpu/devgpu/sdk"
)

// settingFlags are the flags for the project settings, one per setting and
// named after it (max_gpus is --max-gpus). `admin project create|update`
// use them for a project's own settings and `admin org update` for the
// organisation's defaults. Only the flags given on the command line are
// collected, so an update leaves the other settings alone.
type settingFlags struct {
	gpuEnabled                             bool
	maxGPUs, maxGPUsPerUser                int
	gpuTypes, regions, images, egressAllow []string
	defaultImage, shellMode, egress        string
	idleTimeout, maxLifetime, detachGrace  time.Duration
	budget                                 float64
	budgetUnit, budgetAction               string
	budgetThresholds                       []int
	workspace                              bool
	workspaceLimit, logLimit               string
}

func (f *settingFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.gpuEnabled, "gpu-enabled", false, "allow GPU sessions (--gpu-enabled=false stops new ones)")
	fl.IntVar(&f.maxGPUs, "max-gpus", 0, "most GPUs in use at once in a project (0: no limit)")
	fl.IntVar(&f.maxGPUsPerUser, "max-gpus-per-user", 0, "most GPUs one user may use at once in a project (0: no limit)")
	fl.StringSliceVar(&f.gpuTypes, "gpu-types", nil, `allowed GPU types, e.g. t4,a100 ("": any)`)
	fl.StringSliceVar(&f.regions, "regions", nil, `allowed regions ("": any)`)
	fl.StringVar(&f.defaultImage, "default-image", "", "image for sessions that ask for none")
	fl.StringSliceVar(&f.images, "images", nil, `allowed images ("": any)`)
	fl.StringVar(&f.shellMode, "shell-mode", "", "dedicated (a session per shell), shared (one per user) or spillover (dedicated up to the per-user cap, then shared)")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", 0, "end sessions idle this long (0s: never)")
	fl.DurationVar(&f.maxLifetime, "max-lifetime", 0, "end sessions this old (0s: never)")
	fl.DurationVar(&f.detachGrace, "detach-grace", 0, "how long a session waits for a vanished client to come back")
	fl.StringVar(&f.egress, "egress", "", "session network egress: none, allow-list or all")
	fl.StringSliceVar(&f.egressAllow, "egress-allow", nil, "destinations for the allow-list: CIDRs or hosts with an optional :port, e.g. 10.0.0.0/8,pypi.org:443 (implies --egress allow-list)")
	fl.Float64Var(&f.budget, "budget", 0, "monthly budget, in the rate card's currency or, with --budget-unit gpu-hours, in GPU-hours (0: none)")
	fl.StringVar(&f.budgetUnit, "budget-unit", sdk.BudgetCurrency, "unit of --budget: currency or gpu-hours")
	fl.IntSliceVar(&f.budgetThresholds, "budget-thresholds", []int{80, 100}, "percentages of the budget that warn, e.g. 50,80,100")
	fl.StringVar(&f.budgetAction, "budget-action", sdk.BudgetRefuse, "at 100%: refuse new sessions, or stop running ones too")
	fl.BoolVar(&f.workspace, "workspace", false, "give each user a persistent workspace, mounted into their sessions at $DEVGPU_WORKSPACE")
	fl.StringVar(&f.workspaceLimit, "workspace-limit", "", `size limit of each user's workspace, e.g. 50GB ("0": none); over it, it is mounted read-only`)
	fl.StringVar(&f.logLimit, "log-limit", "", "output each detached run keeps in the server's log, e.g. 64MiB (KiB, MiB, GiB count in 1024s; KB, MB, GB in 1000s), from "+sizeWords(policy.MinLogLimit)+" to "+sizeWords(policy.MaxLogLimit)+"; past it, the oldest output is dropped")
}

// settings returns the settings whose flags cmd was given.
func (f *settingFlags) settings(cmd *cobra.Command) (sdk.ProjectSettings, error) {
	var s sdk.ProjectSettings
	changed := cmd.Flags().Changed
	if changed("gpu-enabled") {
		s.GPUEnabled = ptrTo(f.gpuEnabled)
	}
	if changed("max-gpus") {
		s.MaxGPUs = ptrTo(f.maxGPUs)
	}
	if changed("max-gpus-per-user") {
		s.MaxGPUsPerUser = ptrTo(f.maxGPUsPerUser)
	}
	if changed("gpu-types") {
		s.GPUTypes = ptrTo(cleanList(f.gpuTypes))
	}
	if changed("regions") {
		s.Regions = ptrTo(cleanList(f.regions))
	}
	if changed("default-image") {
		s.DefaultImage = ptrTo(strings.TrimSpace(f.defaultImage))
	}
	if changed("images") {
		s.Images = ptrTo(cleanList(f.images))
	}
	if changed("shell-mode") {
		modes := []string{sdk.ModeDedicated, sdk.ModeShared, sdk.ModeSpillover}
		if !slices.Contains(modes, f.shellMode) {
			return s, fmt.Errorf("--shell-mode %q is not a shell mode; use dedicated, shared or spillover", f.shellMode)
		}
		s.ShellMode = ptrTo(f.shellMode)
	}
	if changed("idle-timeout") {
		s.IdleTimeout = ptrTo(sdk.Duration(f.idleTimeout))
	}
	if changed("max-lifetime") {
		s.MaxLifetime = ptrTo(sdk.Duration(f.maxLifetime))
	}
	if changed("detach-grace") {
		s.DetachGrace = ptrTo(sdk.Duration(f.detachGrace))
	}
	if len(budgetFields(cmd)) > 0 {
		// The flags not given hold their defaults here: an update sends
		// budgetFields along, so that only the given ones change.
		s.Budget = &sdk.Budget{Amount: f.budget, Unit: f.budgetUnit, Thresholds: f.budgetThresholds, Action: f.budgetAction}
	}
	if changed("workspace") || changed("workspace-limit") {
		w := sdk.Workspace{Enabled: f.workspace || !changed("workspace")}
		if changed("workspace-limit") {
			n, err := parseSize("workspace-limit", f.workspaceLimit, "50GB")
			if err != nil {
				return s, err
			}
			w.LimitBytes = n
		}
		s.Workspace = &w
	}
	if changed("log-limit") {
		n, err := parseSize("log-limit", f.logLimit, "64MiB")
		if err != nil {
			return s, err
		}
		if n < policy.MinLogLimit || n > policy.MaxLogLimit {
			return s, fmt.Errorf("--log-limit %s is out of range; give a size from %s to %s", strings.TrimSpace(f.logLimit), sizeWords(policy.MinLogLimit), sizeWords(policy.MaxLogLimit))
		}
		s.LogLimitBytes = &n
	}
	if changed("egress") || changed("egress-allow") {
		e, err := f.egressPolicy(changed("egress"), changed("egress-allow"))
		if err != nil {
			return s, err
		}
		s.Egress = &e
	}
	if err := policy.Validate(s); err != nil {
		return s, err
	}
	return s, nil
}

// budgetFields names the budget fields whose flags cmd was given, in the
// spelling of sdk.ProjectUpdate.BudgetFields.
func budgetFields(cmd *cobra.Command) []string {
	var out []string
	for _, name := range []string{"amount", "unit", "thresholds", "action"} {
		flag := "budget-" + name
		if name == "amount" {
			flag = "budget"
		}
		if cmd.Flags().Changed(flag) {
			out = append(out, name)
		}
	}
	return out
}

func (f *settingFlags) egressPolicy(modeGiven, allowGiven bool) (sdk.Egress, error) {
	mode := f.egress
	if allowGiven {
		if modeGiven && mode != sdk.EgressAllowList {
			return sdk.Egress{}, fmt.Errorf("--egress-allow lists the destinations of --egress allow-list, not of --egress %s; drop one of the two flags", mode)
		}
		mode = sdk.EgressAllowList
	}
	switch mode {
	case sdk.EgressNone, sdk.EgressAll:
		return sdk.Egress{Mode: mode}, nil
	case sdk.EgressAllowList:
		allow := cleanList(f.egressAllow)
		if len(allow) == 0 {
			return sdk.Egress{}, fmt.Errorf("--egress allow-list needs destinations; give them with --egress-allow, e.g. --egress-allow 10.0.0.0/8,pypi.org:443")
		}
		return sdk.Egress{Mode: mode, Allow: allow}, nil
	default:
		return sdk.Egress{}, fmt.Errorf("--egress %q is not an egress mode; use none, allow-list or all", mode)
	}
}

// settingNames checks the setting names given to flag (--unset, --lock,
// --unlock) and returns them in their API spelling, without repeats. The
// flag spelling (max-gpus) is accepted as well as the API one (max_gpus).
func settingNames(flag string, in []string) ([]string, error) {
	var out []string
	for _, n := range cleanList(in) {
		name := strings.ReplaceAll(strings.ToLower(n), "-", "_")
		if !slices.Contains(policy.Names, name) {
			return nil, fmt.Errorf("--%s %q names no setting; settings are %s", flag, n, strings.Join(policy.Names, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// checkSetAndUnset refuses a setting both given a value and unset.
func checkSetAndUnset(s sdk.ProjectSettings, unset []string) error {
	for _, name := range policy.SetIn(s) {
		if slices.Contains(unset, name) {
			return fmt.Errorf("%s is both set (--%s) and unset (--unset); give one of the two", name, strings.ReplaceAll(name, "_", "-"))
		}
	}
	return nil
}

// cleanList trims the entries of a list flag and drops empty ones; the
// result is never nil, so an empty flag ("") sends an empty list.
func cleanList(in []string) []string {
	out := []string{}
	for _, v := range in {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func ptrTo[T any](v T) *T { return &v }

// parseSize reads a size flag: bytes, or a number with a unit such as
// 512KiB, 64MiB, 1GiB (powers of 1024) or 50GB (powers of 1000).
func parseSize(flag, v, example string) (int64, error) {
	n, err := humanize.ParseBytes(strings.TrimSpace(v))
	if err != nil || n > math.MaxInt64 {
		return 0, fmt.Errorf("--%s %q is not a size such as %s", flag, v, example)
	}
	return int64(n), nil
}

// sizeWords writes n bytes in the largest of B, KiB, MiB, GiB that counts
// it whole, as a bound is best read: 64 KiB, 4 GiB.
func sizeWords(n int64) string {
	unit := 0
	for ; unit < 3 && n != 0 && n%1024 == 0; unit++ {
		n /= 1024
	}
	return fmt.Sprintf("%d %s", n, []string{"B", "KiB", "MiB", "GiB"}[unit])
}

// settingValues returns the settings s sets by name, as decoded JSON
// values, the form in which sdk.Setting carries them.
func settingValues(s sdk.ProjectSettings) map[string]any {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // plain data always marshals
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	return m
}

// settingOrder returns the names in m in the order of policy.Names, then
// any others (from a newer server) sorted.
func settingOrder[V any](m map[string]V) []string {
	var out, extra []string
	for _, name := range policy.Names {
		if _, ok := m[name]; ok {
			out = append(out, name)
		}
	}
	for name := range m {
		if !slices.Contains(policy.Names, name) {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	return append(out, extra...)
}

// formatSetting renders a setting's value, as decoded from JSON, for a
// table: the zero values that mean "no limit" or "any" say so.
func formatSetting(name string, v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case bool:
		return strconv.FormatBool(v)
	case float64:
		if v == 0 && (name == "max_gpus" || name == "max_gpus_per_user") {
			return "no limit"
		}
		if name == "log_limit_bytes" {
			return humanize.IBytes(uint64(v)) + " per run"
		}
		return strconv.FormatFloat(v, 'f', -1, 64)
	case string:
		switch {
		case v == "":
			return "-"
		case v == "0s" && (name == "idle_timeout" || name == "max_lifetime"):
			return "never"
		}
		return v
	case []any:
		if len(v) == 0 {
			return "any"
		}
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = formatSetting("", e)
		}
		return strings.Join(parts, ",")
	case map[string]any:
		if text, ok := formatObject(name, v); ok { // admin_show.go
			return text
		}
		if mode, ok := v["mode"].(string); ok && name == "egress" {
			if allow, ok := v["allow"].([]any); ok && len(allow) > 0 {
				return mode + " " + formatSetting("", allow)
			}
			return mode
		}
	}
	b, _ := json.Marshal(v)
	return string(b)
}
