package policy

import (
	"slices"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

func TestMergeBudgetChangesOnlyNamedFields(t *testing.T) {
	t.Parallel()
	base := sdk.Budget{Amount: 500, Unit: sdk.BudgetGPUHours, Thresholds: []int{50, 80, 100}, Action: sdk.BudgetStop}
	u := sdk.Budget{Amount: 0.05, Unit: sdk.BudgetCurrency, Thresholds: []int{80, 100}, Action: sdk.BudgetRefuse}
	tests := []struct {
		fields []string
		want   sdk.Budget
	}{
		{[]string{"amount"}, sdk.Budget{Amount: 0.05, Unit: sdk.BudgetGPUHours, Thresholds: []int{50, 80, 100}, Action: sdk.BudgetStop}},
		{[]string{"action"}, sdk.Budget{Amount: 500, Unit: sdk.BudgetGPUHours, Thresholds: []int{50, 80, 100}, Action: sdk.BudgetRefuse}},
		{[]string{"unit", "thresholds"}, sdk.Budget{Amount: 500, Unit: sdk.BudgetCurrency, Thresholds: []int{80, 100}, Action: sdk.BudgetStop}},
		{BudgetFields, u},
	}
	for _, tt := range tests {
		got, err := MergeBudget(base, u, tt.fields)
		if err != nil {
			t.Fatalf("%v: %v", tt.fields, err)
		}
		if got.Amount != tt.want.Amount || got.Unit != tt.want.Unit || got.Action != tt.want.Action || !slices.Equal(got.Thresholds, tt.want.Thresholds) {
			t.Errorf("MergeBudget(%v) = %+v, want %+v", tt.fields, got, tt.want)
		}
	}
	if _, err := MergeBudget(base, u, []string{"currency"}); err == nil {
		t.Error("an unknown budget field was accepted")
	}
	if _, err := MergeBudget(base, sdk.Budget{Amount: -1}, []string{"amount"}); err == nil {
		t.Error("a negative amount was accepted")
	}
}
