package metering

import (
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// TestMonthPartsAddUp: an entry across month (and year) boundaries splits
// into parts whose costs add up to the entry's, and each month's part is
// what Aggregate reports for that month.
func TestMonthPartsAddUp(t *testing.T) {
	t.Parallel()
	entries := []store.UsageEntry{
		{Project: "p", Start: time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC), End: time.Date(2027, 2, 1, 0, 0, 1, 0, time.UTC), CostMicros: 1_000_003},
		{Project: "p", Start: time.Date(2026, 12, 3, 1, 2, 3, 4000, time.UTC), End: time.Date(2026, 12, 3, 1, 2, 3, 4000, time.UTC), CostMicros: 0},
		{Project: "p", Start: time.Date(2026, 12, 31, 23, 59, 59, 999999000, time.UTC), End: time.Date(2027, 1, 1, 0, 0, 0, 1000, time.UTC), CostMicros: 7},
	}
	months := map[string]MonthPart{}
	for _, e := range entries {
		var sum int64
		for _, p := range MonthParts(e) {
			sum += p.CostMicros
			m := months[p.Month]
			m.CostMicros += p.CostMicros
			m.GPUMicros += p.GPUMicros
			months[p.Month] = m
		}
		if e.End.After(e.Start) && sum != e.CostMicros {
			t.Errorf("parts of %v–%v cost %d, the entry %d", e.Start, e.End, sum, e.CostMicros)
		}
	}
	if len(months) != 4 {
		t.Fatalf("months %v, want 2026-11 to 2027-02", months)
	}
	for month, got := range months {
		from, to, err := MonthBounds(month)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := Aggregate(entries, ByProject, from, to)
		if err != nil {
			t.Fatal(err)
		}
		want := Total(rows)
		if got.CostMicros != want.CostMicros || float64(got.GPUMicros)/1e6 != want.GPUSeconds {
			t.Errorf("%s: parts %d micros, %d GPU-µs; Aggregate %d micros, %v GPU-seconds", month, got.CostMicros, got.GPUMicros, want.CostMicros, want.GPUSeconds)
		}
	}
}
