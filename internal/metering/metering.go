// Package metering holds the arithmetic of the money side: the price of
// GPU time under rate cards, months, usage reports and budgets. It does no
// I/O and keeps no state; the control plane reads the ledger and the rate
// cards from the store and passes them in.
//
// Money is integer millionths of a currency unit ("micros") throughout,
// so that reports reconcile with the ledger to the last digit: a price is
// rounded once, to the nearest micro, and a report's parts add up to the
// entries they come from exactly. Times are UTC; a month is a calendar
// month in UTC, written "2006-01".
package metering

import (
	"cmp"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// nanosPerHour is the divisor that turns micros per hour × nanoseconds
// into micros.
const nanosPerHour = int64(time.Hour)

// RateFor returns the card's price of one GPU-hour of the type in the
// region, in micros: the region's own rate if the card has one, else the
// type's rate without a region, else 0.
func RateFor(card store.RateCard, gpuType, region string) int64 {
	var fallback int64
	for _, r := range card.Rates {
		if r.GPUType != gpuType {
			continue
		}
		if r.Region == region {
			return r.PerHourMicros
		}
		if r.Region == "" {
			fallback = r.PerHourMicros
		}
	}
	return fallback
}

// Cost returns the price, in micros, of one GPU of the type in the region
// over [start, end), and its currency.
//
// Each card is in force from its EffectiveFrom until the next card's (the
// cards may come in any order), and prices the part of [start, end) in
// its time with RateFor; time before the first card is free. The parts
// are added exactly and rounded once, to the nearest micro (halves away
// from zero), so that a session across a rate change costs the sum of its
// parts to the micro; a result beyond int64 saturates. An empty or
// reversed interval costs 0.
//
// The currency is that of the last card in force at or before end (of the
// first card when end is before all of them), "" without cards. A valid
// set of cards (ValidateCards) has one currency.
func Cost(cards []store.RateCard, gpuType, region string, start, end time.Time) (micros int64, currency string) {
	if len(cards) == 0 {
		return 0, ""
	}
	cards = byEffectiveFrom(cards)
	currency = cards[0].Currency
	for _, c := range cards {
		if !c.EffectiveFrom.After(end) {
			currency = c.Currency
		}
	}
	if !end.After(start) {
		return 0, currency
	}
	sum := new(big.Int)
	for i, c := range cards {
		from, until := later(start, c.EffectiveFrom), end
		if i+1 < len(cards) && cards[i+1].EffectiveFrom.Before(until) {
			until = cards[i+1].EffectiveFrom
		}
		rate := RateFor(c, gpuType, region)
		if rate == 0 || !until.After(from) {
			continue
		}
		sum.Add(sum, new(big.Int).Mul(big.NewInt(rate), nanos(from, until)))
	}
	return divRound(sum, big.NewInt(nanosPerHour)), currency
}

// byEffectiveFrom returns cards ordered by EffectiveFrom, a sorted copy
// unless they already are; cards of the same time keep their order.
func byEffectiveFrom(cards []store.RateCard) []store.RateCard {
	less := func(a, b store.RateCard) int { return a.EffectiveFrom.Compare(b.EffectiveFrom) }
	if slices.IsSortedFunc(cards, less) {
		return cards
	}
	cards = slices.Clone(cards)
	slices.SortStableFunc(cards, less)
	return cards
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// nanos returns b - a in nanoseconds, exactly, however far apart.
func nanos(a, b time.Time) *big.Int {
	n := new(big.Int).Mul(big.NewInt(b.Unix()-a.Unix()), big.NewInt(int64(time.Second)))
	return n.Add(n, big.NewInt(int64(b.Nanosecond()-a.Nanosecond())))
}

// divRound returns n / d rounded to the nearest integer, halves away from
// zero, saturated to int64; d > 0.
func divRound(n, d *big.Int) int64 {
	q, r := new(big.Int).QuoRem(n, d, new(big.Int)) // q truncated toward zero
	if twice := new(big.Int).Abs(r); twice.Lsh(twice, 1).Cmp(d) >= 0 {
		q.Add(q, big.NewInt(int64(n.Sign())))
	}
	switch {
	case q.IsInt64():
		return q.Int64()
	case q.Sign() > 0:
		return math.MaxInt64
	default:
		return math.MinInt64
	}
}

// ValidateCards checks rate cards as the server takes them from its
// configuration: each has an EffectiveFrom, a currency and, per GPU type
// and region, at most one rate, of 0 or more, for a named type; no two
// take effect at the same time; and all have the same currency, so that
// usage priced under any of them adds up.
func ValidateCards(cards []store.RateCard) error {
	var errs []error
	seen := make(map[time.Time]bool, len(cards))
	for i, c := range cards {
		name := fmt.Sprintf("rate card %d (from %s)", i+1, c.EffectiveFrom.UTC().Format(time.RFC3339Nano))
		if c.EffectiveFrom.IsZero() {
			name = fmt.Sprintf("rate card %d", i+1)
			errs = append(errs, fmt.Errorf("%s: no time it takes effect from", name))
		} else if at := c.EffectiveFrom.UTC(); seen[at] {
			errs = append(errs, fmt.Errorf("%s: another card takes effect at the same time", name))
		} else {
			seen[at] = true
		}
		switch {
		case c.Currency == "":
			errs = append(errs, fmt.Errorf("%s: no currency", name))
		case c.Currency != cards[0].Currency:
			errs = append(errs, fmt.Errorf("%s: currency %s differs from %s, that of card 1: usage in two currencies does not add up",
				name, c.Currency, cards[0].Currency))
		}
		type key struct{ gpuType, region string }
		rates := make(map[key]bool, len(c.Rates))
		for _, r := range c.Rates {
			what := r.GPUType
			if r.Region != "" {
				what += " in " + r.Region
			}
			switch {
			case r.GPUType == "":
				errs = append(errs, fmt.Errorf("%s: a rate without a GPU type", name))
			case r.PerHourMicros < 0:
				errs = append(errs, fmt.Errorf("%s: negative rate for %s", name, what))
			case rates[key{r.GPUType, r.Region}]:
				errs = append(errs, fmt.Errorf("%s: two rates for %s", name, what))
			}
			rates[key{r.GPUType, r.Region}] = true
		}
	}
	return errors.Join(errs...)
}

// Month returns the calendar month (UTC) of t, as "2006-01".
func Month(t time.Time) string { return t.UTC().Format("2006-01") }

// MonthBounds returns the month's first instant and the next month's, in
// UTC, for a month written as Month writes it ("2006-01", years 0000 to
// 9999); anything else is an error.
func MonthBounds(month string) (from, to time.Time, err error) {
	from, err = time.Parse("2006-01", month)
	if err != nil || Month(from) != month {
		return time.Time{}, time.Time{}, fmt.Errorf("month %q is not YYYY-MM, e.g. 2026-11", month)
	}
	return from, from.AddDate(0, 1, 0), nil
}

// Report groupings, the values of Aggregate's by.
const (
	ByDay     = "day"
	ByUser    = "user"
	ByProject = "project"
	ByGPUType = "gpu-type"
)

// Groupings lists the report groupings.
var Groupings = []string{ByDay, ByUser, ByProject, ByGPUType}

// Row is one line of a usage report: the usage of one group.
type Row struct {
	Key        string // the UTC date ("2006-01-02"), user, project or GPU type
	GPUSeconds float64
	GPUHours   float64
	CostMicros int64
	Currency   string
}

// span is a duration that does not overflow: whole seconds and nanoseconds.
type span struct{ sec, nsec int64 }

func (s *span) add(a, b time.Time) {
	s.sec += b.Unix() - a.Unix()
	s.nsec += int64(b.Nanosecond() - a.Nanosecond())
	s.sec, s.nsec = s.sec+s.nsec/int64(time.Second), s.nsec%int64(time.Second)
}

func (s span) seconds() float64 { return float64(s.sec) + float64(s.nsec)/1e9 }

// Aggregate groups the entries' usage within [from, to) by "day", "user",
// "project" or "gpu-type" (see the By constants) into rows ordered by
// key. A zero from or to leaves that side open.
//
// Each entry counts for its part within [from, to); by day, that part is
// further split at midnight UTC. A part's cost is the entry's cost
// pro-rated by duration: the part [a, b) of an entry [S, E) costing C
// costs round(C×(b−S)/(E−S)) − round(C×(a−S)/(E−S)), so the parts of an
// entry always add up to its cost exactly, and two adjacent windows add
// up to their union. (Pro-rating is by duration even where the entry
// spans a rate change: the ledger keeps a total per entry, not its
// history.) Entries, or parts, of no length count for nothing.
//
// The rows have the one currency of the entries (entries without a
// currency, free ones, go with any); entries in two currencies, an unknown
// grouping, or an entry that ends before it starts are an error.
func Aggregate(entries []store.UsageEntry, by string, from, to time.Time) ([]Row, error) {
	key, err := keyFunc(by)
	if err != nil {
		return nil, err
	}
	type acc struct {
		dur  span
		cost int64
	}
	groups := make(map[string]*acc)
	currency := ""
	for _, e := range entries {
		if e.End.Before(e.Start) {
			return nil, fmt.Errorf("usage of session %s GPU %s ends at %v, before its start at %v", e.SessionID, e.GPUID, e.End, e.Start)
		}
		a, b := e.Start, e.End
		if !from.IsZero() {
			a = later(a, from)
		}
		if !to.IsZero() {
			b = earlier(b, to)
		}
		if !b.After(a) {
			continue
		}
		if e.Currency != "" && e.Currency != currency {
			if currency != "" {
				return nil, fmt.Errorf("usage in both %s and %s: a report adds up one currency", currency, e.Currency)
			}
			currency = e.Currency
		}
		for p := a; p.Before(b); {
			q := b
			if by == ByDay {
				q = earlier(b, nextMidnight(p))
			}
			g := groups[key(e, p)]
			if g == nil {
				g = new(acc)
				groups[key(e, p)] = g
			}
			g.dur.add(p, q)
			g.cost += share(e, q) - share(e, p)
			p = q
		}
	}
	rows := make([]Row, 0, len(groups))
	for k, g := range groups {
		sec := g.dur.seconds()
		rows = append(rows, Row{Key: k, GPUSeconds: sec, GPUHours: sec / 3600, CostMicros: g.cost, Currency: currency})
	}
	slices.SortFunc(rows, func(a, b Row) int { return cmp.Compare(a.Key, b.Key) })
	if len(rows) == 0 {
		return nil, nil
	}
	return rows, nil
}

func keyFunc(by string) (func(e store.UsageEntry, at time.Time) string, error) {
	switch by {
	case ByDay:
		return func(_ store.UsageEntry, at time.Time) string { return at.UTC().Format(time.DateOnly) }, nil
	case ByUser:
		return func(e store.UsageEntry, _ time.Time) string { return e.User }, nil
	case ByProject:
		return func(e store.UsageEntry, _ time.Time) string { return e.Project }, nil
	case ByGPUType:
		return func(e store.UsageEntry, _ time.Time) string { return e.GPUType }, nil
	}
	return nil, fmt.Errorf("cannot group usage by %q: give %s", by, strings.Join(Groupings, ", "))
}

func nextMidnight(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// share returns the cost of the entry from its start to at, pro-rated by
// duration and rounded as Cost rounds; the entry has a length.
func share(e store.UsageEntry, at time.Time) int64 {
	if !at.Before(e.End) {
		return e.CostMicros
	}
	if !at.After(e.Start) {
		return 0
	}
	n := new(big.Int).Mul(big.NewInt(e.CostMicros), nanos(e.Start, at))
	return divRound(n, nanos(e.Start, e.End))
}

// Total adds rows up into one, with Key "total". Rows from one Aggregate
// have one currency; Total takes the first that is set.
func Total(rows []Row) Row {
	t := Row{Key: "total"}
	for _, r := range rows {
		t.GPUSeconds += r.GPUSeconds
		t.CostMicros += r.CostMicros
		if t.Currency == "" {
			t.Currency = r.Currency
		}
	}
	t.GPUHours = t.GPUSeconds / 3600
	return t
}

// WriteCSV writes the rows as CSV (RFC 4180) with a header: the grouping
// ("day", "user", "project" or "gpu_type"), gpu_seconds (3 decimals),
// gpu_hours (6 decimals), cost (in currency units, 6 decimals: exactly the
// micros, so that its sum is the ledger's) and currency.
func WriteCSV(w io.Writer, rows []Row, by string) error {
	if _, err := keyFunc(by); err != nil {
		return err
	}
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{strings.ReplaceAll(by, "-", "_"), "gpu_seconds", "gpu_hours", "cost", "currency"})
	for _, r := range rows {
		_ = cw.Write([]string{
			r.Key,
			strconv.FormatFloat(r.GPUSeconds, 'f', 3, 64),
			strconv.FormatFloat(r.GPUHours, 'f', 6, 64),
			FormatMicros(r.CostMicros),
			r.Currency,
		})
	}
	cw.Flush()
	return cw.Error()
}

// ReportRows are the rows of a usage report as WriteCSV takes them, each
// in the report's currency: what `devgpu usage --format csv` and the API's
// format=csv write, so that both give the same numbers.
func ReportRows(r sdk.UsageReport) []Row {
	rows := make([]Row, 0, len(r.Rows))
	for _, u := range r.Rows {
		rows = append(rows, Row{Key: u.Key, GPUSeconds: u.GPUSeconds, GPUHours: u.GPUHours, CostMicros: u.CostMicros, Currency: r.Currency})
	}
	return rows
}

// FormatMicros writes micros as currency units with 6 decimals:
// 12345678 is "12.345678", -1 is "-0.000001".
func FormatMicros(micros int64) string {
	sign, u := "", uint64(micros)
	if micros < 0 {
		sign, u = "-", -u // two's complement: right for MinInt64 too
	}
	return fmt.Sprintf("%s%d.%06d", sign, u/1e6, u%1e6)
}

// ParseMicros reads an amount of currency units with up to 6 decimals,
// such as "0.35", "12" or "-1.000001", into micros, exactly.
func ParseMicros(s string) (int64, error) {
	bad := func() (int64, error) {
		return 0, fmt.Errorf("%q is not an amount with up to 6 decimals, e.g. 0.35", s)
	}
	digits, neg := strings.CutPrefix(s, "-")
	whole, frac, dot := strings.Cut(digits, ".")
	if whole == "" || (dot && (frac == "" || len(frac) > 6)) || !allDigits(whole) || !allDigits(frac) {
		return bad()
	}
	frac += strings.Repeat("0", 6-len(frac))
	u, err := strconv.ParseUint(whole+frac, 10, 64)
	limit := uint64(math.MaxInt64)
	if neg {
		limit++
	}
	if err != nil || u > limit {
		return bad()
	}
	if neg {
		return int64(-u), nil
	}
	return int64(u), nil
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
