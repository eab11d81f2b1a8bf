package metering_test

import (
	"math"
	"reflect"
	"testing"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/sdk"
)

func TestBudgetUse(t *testing.T) {
	money := func(amount float64) sdk.Budget { return sdk.Budget{Amount: amount, Unit: sdk.BudgetCurrency} }
	hours := func(amount float64) sdk.Budget { return sdk.Budget{Amount: amount, Unit: sdk.BudgetGPUHours} }
	for _, c := range []struct {
		name    string
		b       sdk.Budget
		cost    int64
		seconds float64
		want    float64
	}{
		{"no budget", money(0), 5_000_000, 3600, 0},
		{"negative", money(-10), 5_000_000, 3600, 0},
		{"NaN", money(math.NaN()), 5_000_000, 3600, 0},
		{"nothing used", money(10), 0, 0, 0},
		{"exactly 80%", money(10), 8_000_000, 99999, 80},
		{"a micro under 80%", money(10), 7_999_999, 0, 79.99999},
		{"exactly 100%", money(10), 10_000_000, 0, 100},
		{"over", money(10), 25_000_000, 0, 250},
		{"cents", money(0.1), 100_000, 0, 100},
		{"fractions", money(123.45), 61_725_000, 0, 50},
		{"unit unset is currency", sdk.Budget{Amount: 2}, 1_000_000, 0, 50},
		{"below a micro", money(1e-9), 1, 0, 100},
		{"GPU-hours", hours(1), 99_999_999, 2880, 80},
		{"GPU-hours, exactly", hours(2.5), 0, 9000, 100},
		{"GPU-hours, no budget", hours(0), 0, 9000, 0},
	} {
		got := metering.BudgetUse(c.b, c.cost, c.seconds)
		if math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s: BudgetUse = %v, want %v", c.name, got, c.want)
		}
	}
	// The lines are exact, not within a rounding error.
	if got := metering.BudgetUse(money(10), 8_000_000, 0); got != 80 {
		t.Errorf("BudgetUse(8 of 10) = %v, want exactly 80", got)
	}
	if got := metering.BudgetUse(money(0.3), 300_000, 0); got != 100 {
		t.Errorf("BudgetUse(0.3 of 0.3) = %v, want exactly 100", got)
	}
	if got := metering.BudgetUse(hours(0.1), 0, 360); got != 100 {
		t.Errorf("BudgetUse(0.1 of 0.1 GPU-hours) = %v, want exactly 100", got)
	}
}

func TestCrossed(t *testing.T) {
	b := sdk.Budget{Amount: 10, Unit: sdk.BudgetCurrency, Thresholds: []int{80, 50, 80, 0, -5, 120}}
	if got, want := metering.Thresholds(b), []int{50, 80, 100, 120}; !reflect.DeepEqual(got, want) {
		t.Errorf("Thresholds = %v, want %v", got, want)
	}
	for _, c := range []struct {
		percent   float64
		want      []int
		exhausted bool
	}{
		{0, nil, false},
		{49.999, nil, false},
		{50, []int{50}, false},
		{79.99999, []int{50}, false},
		{80, []int{50, 80}, false},
		{99.9, []int{50, 80}, false},
		{100, []int{50, 80, 100}, true},
		{119, []int{50, 80, 100}, true},
		{120, []int{50, 80, 100, 120}, true},
		{1e9, []int{50, 80, 100, 120}, true},
		{math.Inf(1), []int{50, 80, 100, 120}, true},
		{math.NaN(), nil, false},
	} {
		if got := metering.Crossed(b, c.percent); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Crossed(%v) = %v, want %v", c.percent, got, c.want)
		}
		if got := metering.Exhausted(b, c.percent); got != c.exhausted {
			t.Errorf("Exhausted(%v) = %t, want %t", c.percent, got, c.exhausted)
		}
	}
	// Without thresholds, 100 is still the line.
	plain := sdk.Budget{Amount: 1, Unit: sdk.BudgetGPUHours}
	if got := metering.Crossed(plain, 100); !reflect.DeepEqual(got, []int{100}) {
		t.Errorf("Crossed(no thresholds, 100) = %v, want [100]", got)
	}
	if b.Thresholds[0] != 80 {
		t.Error("Thresholds reordered the budget's thresholds")
	}
	// No budget, no lines.
	none := sdk.Budget{Thresholds: []int{50, 100}}
	if got := metering.Crossed(none, 1000); got != nil || metering.Exhausted(none, 1000) || metering.Thresholds(none) != nil {
		t.Errorf("a budget of no amount: Crossed = %v, Exhausted %t", got, metering.Exhausted(none, 1000))
	}
}
