package cli

import (
	"encoding/json"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

func TestFormatObjectSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"budget", sdk.Budget{Unit: sdk.BudgetCurrency, Action: sdk.BudgetRefuse}, "none"},
		{"budget", sdk.Budget{Amount: 500, Unit: sdk.BudgetCurrency, Thresholds: []int{50, 80}}, "500 a month (rate card currency), warn at 50%, 80%; at 100% refuse new sessions"},
		{"budget", sdk.Budget{Amount: 0.05, Unit: sdk.BudgetGPUHours, Action: sdk.BudgetStop}, "0.05 GPU-hours a month; at 100% stop running sessions"},
		{"workspace", sdk.Workspace{}, "off"},
		{"workspace", sdk.Workspace{Enabled: true}, "on, no size limit"},
		{"workspace", sdk.Workspace{Enabled: true, LimitBytes: 50e9}, "on, 50 GB per user"},
	} {
		// Values reach the CLI as JSON, as in sdk.Setting.
		b, _ := json.Marshal(tc.v)
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if got := formatSetting(tc.name, v); got != tc.want {
			t.Errorf("%s %s = %q, want %q", tc.name, b, got, tc.want)
		}
	}
}
