package metering

import (
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// MonthPart is the part of a ledger entry within one calendar month (UTC).
type MonthPart struct {
	Month      string // "2006-01"
	CostMicros int64
	GPUMicros  int64 // the part's length, in microseconds
}

// MonthParts splits the entry at the starts of months. Each part's cost is
// pro-rated as Aggregate pro-rates it, so the parts add up to the entry's
// cost exactly, and a month's parts of a set of entries add up to the cost
// Aggregate reports for that month from the same entries. An entry of no
// length (or reversed) has no parts.
func MonthParts(e store.UsageEntry) []MonthPart {
	if !e.End.After(e.Start) {
		return nil
	}
	var out []MonthPart
	for a := e.Start; a.Before(e.End); {
		y, m, _ := a.UTC().Date()
		b := earlier(e.End, time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC))
		out = append(out, MonthPart{Month: Month(a), CostMicros: share(e, b) - share(e, a), GPUMicros: b.Sub(a).Microseconds()})
		a = b
	}
	return out
}
