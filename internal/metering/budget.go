package metering

import (
	"math"
	"slices"

	"github.com/devgpu/devgpu/sdk"
)

// BudgetUse returns how much of the monthly budget b the month's usage
// takes, in percent: its cost against an Amount in currency units, or its
// GPU-seconds against an Amount in GPU-hours (Unit sdk.BudgetGPUHours;
// any other unit is currency). A budget of no Amount (0, negative or NaN)
// is no budget: 0 percent. A currency Amount counts to the micro, and to
// at least one micro: an Amount of 10 is 10,000,000 micros, of which
// 8,000,000 are exactly 80 percent.
func BudgetUse(b sdk.Budget, monthCostMicros int64, monthGPUSeconds float64) (percent float64) {
	if !(b.Amount > 0) {
		return 0
	}
	if b.Unit == sdk.BudgetGPUHours {
		return monthGPUSeconds * 100 / (b.Amount * 3600)
	}
	return float64(monthCostMicros) * 100 / float64(amountMicros(b.Amount))
}

// amountMicros returns a positive amount in micros: rounded to the
// nearest, at least 1, at most math.MaxInt64.
func amountMicros(amount float64) int64 {
	m := math.Round(amount * 1e6)
	switch {
	case m < 1:
		return 1
	case m >= math.MaxInt64: // 2^63: the float nearest MaxInt64
		return math.MaxInt64
	}
	return int64(m)
}

// Thresholds returns the budget's warning thresholds in percent, ascending,
// without repeats or values below 1, and always with 100, the line at
// which new sessions are refused; nil for a budget of no Amount.
func Thresholds(b sdk.Budget) []int {
	if !(b.Amount > 0) {
		return nil
	}
	ts := []int{100}
	for _, t := range b.Thresholds {
		if t > 0 {
			ts = append(ts, t)
		}
	}
	slices.Sort(ts)
	return slices.Compact(ts)
}

// Crossed returns the thresholds of b (see Thresholds: 100 always counts)
// that a use of percent has reached, at or above each, ascending; nil for
// a budget of no Amount or a use below them all. The server records each
// in the store once per month (store.BudgetAlert) and warns about it.
func Crossed(b sdk.Budget, percent float64) []int {
	var out []int
	for _, t := range Thresholds(b) {
		if percent >= float64(t) {
			out = append(out, t)
		}
	}
	return out
}

// Exhausted reports whether a use of percent has reached 100 percent of a
// budget that has an Amount: then new sessions are refused, and with
// Action sdk.BudgetStop running ones end with reason budget.
func Exhausted(b sdk.Budget, percent float64) bool {
	return b.Amount > 0 && percent >= 100
}
