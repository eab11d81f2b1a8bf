package metering_test

import (
	"bytes"
	"encoding/csv"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/internal/store"
)

var (
	jan = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	jun = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	// cards: t4 costs 0.35 an hour from January (0.50 in eu-west), 0.40
	// from June (everywhere); a100 2.90 from January, and nothing from
	// June, whose card has no a100 rate.
	cards = []store.RateCard{
		{EffectiveFrom: jan, Currency: "USD", Rates: []store.Rate{
			{GPUType: "t4", PerHourMicros: 350_000},
			{GPUType: "t4", Region: "eu-west", PerHourMicros: 500_000},
			{GPUType: "a100", PerHourMicros: 2_900_000},
		}},
		{EffectiveFrom: jun, Currency: "USD", Rates: []store.Rate{
			{GPUType: "t4", PerHourMicros: 400_000},
		}},
	}
)

func TestRateFor(t *testing.T) {
	for _, c := range []struct {
		card        int
		typ, region string
		want        int64
	}{
		{0, "t4", "local", 350_000},
		{0, "t4", "", 350_000},
		{0, "t4", "eu-west", 500_000},
		{0, "a100", "eu-west", 2_900_000},
		{0, "h100", "local", 0},
		{0, "T4", "local", 0},
		{1, "t4", "eu-west", 400_000},
		{1, "a100", "local", 0},
	} {
		if got := metering.RateFor(cards[c.card], c.typ, c.region); got != c.want {
			t.Errorf("RateFor(card %d, %s, %s) = %d, want %d", c.card, c.typ, c.region, got, c.want)
		}
	}
	// Only a region's rate: other regions get nothing.
	only := store.RateCard{Rates: []store.Rate{{GPUType: "t4", Region: "eu", PerHourMicros: 1}}}
	if got := metering.RateFor(only, "t4", "us"); got != 0 {
		t.Errorf("RateFor(another region) = %d, want 0", got)
	}
}

func TestCost(t *testing.T) {
	may31 := jun.Add(-time.Hour)
	for _, c := range []struct {
		name        string
		typ, region string
		start, end  time.Time
		want        int64
	}{
		{"an hour", "t4", "local", jan.Add(time.Hour), jan.Add(2 * time.Hour), 350_000},
		{"90 minutes", "t4", "local", jan, jan.Add(90 * time.Minute), 525_000},
		// 350000/3600 = 97.22 micros a second.
		{"a second, rounded down", "t4", "local", jan, jan.Add(time.Second), 97},
		// 2900000/3600 = 805.56.
		{"a second, rounded up", "a100", "local", jan, jan.Add(time.Second), 806},
		{"a nanosecond", "a100", "local", jan, jan.Add(time.Nanosecond), 0},
		{"region rate", "t4", "eu-west", jan, jan.Add(time.Hour), 500_000},
		{"region without its own rate", "t4", "us-east", jan, jan.Add(time.Hour), 350_000},
		{"after the change, no region rate any more", "t4", "eu-west", jun, jun.Add(time.Hour), 400_000},
		{"unknown type", "h100", "local", jan, jan.Add(time.Hour), 0},
		{"type dropped by the new card", "a100", "local", may31, jun.Add(time.Hour), 2_900_000},
		// One hour at 0.35, then 1.5 at 0.40.
		{"across the rate change", "t4", "local", may31, jun.Add(90 * time.Minute), 350_000 + 600_000},
		{"across the rate change, in a region", "t4", "eu-west", may31, jun.Add(90 * time.Minute), 500_000 + 600_000},
		{"ending at the change", "t4", "local", may31, jun, 350_000},
		{"starting at the change", "t4", "local", jun, jun.Add(time.Hour), 400_000},
		{"before every card", "t4", "local", jan.Add(-2 * time.Hour), jan.Add(-time.Hour), 0},
		{"into the first card", "t4", "local", jan.Add(-time.Hour), jan.Add(time.Hour), 350_000},
		{"empty", "t4", "local", jan, jan, 0},
		{"reversed", "t4", "local", jan.Add(time.Hour), jan, 0},
		{"another zone", "t4", "local", may31.In(time.FixedZone("UTC+9", 9*3600)), jun.Add(time.Hour).In(time.FixedZone("UTC-7", -7*3600)), 750_000},
		// 30 days of t4 across the change: 15 days at each price.
		{"a month", "t4", "local", jun.AddDate(0, 0, -15), jun.AddDate(0, 0, 15), 15 * 24 * (350_000 + 400_000)},
	} {
		got, currency := metering.Cost(cards, c.typ, c.region, c.start, c.end)
		if got != c.want || currency != "USD" {
			t.Errorf("%s: Cost = %d %s, want %d USD", c.name, got, currency, c.want)
		}
	}
}

// TestCostSumOfParts checks that a session across a rate change costs the
// sum of its parts to the micro, where each part is a whole number of
// micros, and that the cost is rounded once, not per part.
func TestCostSumOfParts(t *testing.T) {
	start, end := jun.Add(-17*time.Minute-3*time.Second), jun.Add(41*time.Minute+9*time.Second)
	// 1023 s at 0.35/h = 99458.33; 2469 s at 0.40/h = 274333.33; the sum
	// 373791.67 rounds to 373792, the parts' rounded sum is 373791.
	whole, _ := metering.Cost(cards, "t4", "local", start, end)
	before, _ := metering.Cost(cards, "t4", "local", start, jun)
	after, _ := metering.Cost(cards, "t4", "local", jun, end)
	if whole != 373_792 || before != 99_458 || after != 274_333 {
		t.Errorf("Cost = %d = %d + %d (rounded apart), want 373792 = 99458 + 274333", whole, before, after)
	}
	// Parts of whole micros add up exactly.
	start, end = jun.Add(-36*time.Second), jun.Add(72*time.Second) // 3500 + 8000
	whole, _ = metering.Cost(cards, "t4", "local", start, end)
	before, _ = metering.Cost(cards, "t4", "local", start, jun)
	after, _ = metering.Cost(cards, "t4", "local", jun, end)
	if whole != before+after || before != 3500 || after != 8000 {
		t.Errorf("Cost = %d, parts %d + %d; want 11500 = 3500 + 8000", whole, before, after)
	}
	// Halves: each part alone is half a micro, rounded up, but together
	// they are one.
	half := []store.RateCard{
		{EffectiveFrom: jan, Currency: "EUR", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: 1800}}},
		{EffectiveFrom: jun, Currency: "EUR", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: 1800}}},
	}
	p1, _ := metering.Cost(half, "t4", "local", jun.Add(-time.Second), jun)
	p2, _ := metering.Cost(half, "t4", "local", jun, jun.Add(time.Second))
	both, currency := metering.Cost(half, "t4", "local", jun.Add(-time.Second), jun.Add(time.Second))
	if p1 != 1 || p2 != 1 || both != 1 || currency != "EUR" {
		t.Errorf("Cost of halves = %d and %d, together %d %s; want 1, 1, 1 EUR", p1, p2, both, currency)
	}
}

func TestCostOrderAndCurrency(t *testing.T) {
	reversed := []store.RateCard{cards[1], cards[0]}
	start, end := jun.Add(-time.Hour), jun.Add(time.Hour)
	if got, _ := metering.Cost(reversed, "t4", "local", start, end); got != 750_000 {
		t.Errorf("Cost(cards out of order) = %d, want 750000", got)
	}
	if reversed[0].EffectiveFrom != jun {
		t.Error("Cost reordered the caller's cards")
	}
	if got, currency := metering.Cost(nil, "t4", "local", start, end); got != 0 || currency != "" {
		t.Errorf("Cost(no cards) = %d %q, want 0, no currency", got, currency)
	}
	// Invalid cards in two currencies: that of the card in force at the end.
	mixed := []store.RateCard{{EffectiveFrom: jan, Currency: "USD"}, {EffectiveFrom: jun, Currency: "EUR"}}
	for _, c := range []struct {
		end  time.Time
		want string
	}{
		{jan.Add(-time.Hour), "USD"}, // before every card: the first
		{jan, "USD"},
		{jun.Add(-time.Nanosecond), "USD"},
		{jun, "EUR"},
		{jun.Add(time.Hour), "EUR"},
	} {
		if _, currency := metering.Cost(mixed, "t4", "", jan.Add(-2*time.Hour), c.end); currency != c.want {
			t.Errorf("Cost(until %v) currency %s, want %s", c.end, currency, c.want)
		}
	}
}

func TestCostLong(t *testing.T) {
	// 200 years at a million an hour: far past int64 nanoseconds × micros,
	// exact in the end.
	big := []store.RateCard{{EffectiveFrom: jan, Currency: "USD", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: 1e12}}}}
	end := jan.AddDate(200, 0, 0)
	hours := int64(end.Sub(jan).Hours()) // 200 years fit time.Duration's 292
	if got, _ := metering.Cost(big, "t4", "", jan, end); got != hours*1e12 {
		t.Errorf("Cost(200 years) = %d, want %d", got, hours*1e12)
	}
	// Beyond time.Duration: 1000 years, and a rate of 1 micro an hour.
	big[0].Rates[0].PerHourMicros = 1
	end = jan.AddDate(1000, 0, 0)
	want := (end.Unix() - jan.Unix()) / 3600
	if got, _ := metering.Cost(big, "t4", "", jan, end); got != want {
		t.Errorf("Cost(1000 years) = %d, want %d", got, want)
	}
	// Beyond int64 micros: saturated.
	big[0].Rates[0].PerHourMicros = math.MaxInt64
	if got, _ := metering.Cost(big, "t4", "", jan, jan.Add(2*time.Hour)); got != math.MaxInt64 {
		t.Errorf("Cost(overflow) = %d, want MaxInt64", got)
	}
}

func TestValidateCards(t *testing.T) {
	if err := metering.ValidateCards(cards); err != nil {
		t.Errorf("ValidateCards(valid) = %v", err)
	}
	if err := metering.ValidateCards(nil); err != nil {
		t.Errorf("ValidateCards(none) = %v", err)
	}
	free := []store.RateCard{{EffectiveFrom: jan, Currency: "USD"}, {EffectiveFrom: jun, Currency: "USD", Rates: []store.Rate{{GPUType: "t4"}}}}
	if err := metering.ValidateCards(free); err != nil {
		t.Errorf("ValidateCards(no rates, a rate of 0) = %v", err)
	}
	for _, c := range []struct {
		name  string
		cards []store.RateCard
		want  string
	}{
		{"no time", []store.RateCard{{Currency: "USD"}}, "no time"},
		{"no currency", []store.RateCard{{EffectiveFrom: jan}}, "no currency"},
		{"two currencies", []store.RateCard{{EffectiveFrom: jan, Currency: "USD"}, {EffectiveFrom: jun, Currency: "EUR"}}, "EUR differs from USD"},
		{"same time", []store.RateCard{{EffectiveFrom: jan, Currency: "USD"}, {EffectiveFrom: jan.In(time.FixedZone("UTC+1", 3600)), Currency: "USD"}}, "same time"},
		{"no GPU type", []store.RateCard{{EffectiveFrom: jan, Currency: "USD", Rates: []store.Rate{{PerHourMicros: 1}}}}, "without a GPU type"},
		{"negative", []store.RateCard{{EffectiveFrom: jan, Currency: "USD", Rates: []store.Rate{{GPUType: "t4", PerHourMicros: -1}}}}, "negative rate for t4"},
		{"two rates", []store.RateCard{{EffectiveFrom: jan, Currency: "USD", Rates: []store.Rate{
			{GPUType: "t4", Region: "eu", PerHourMicros: 1}, {GPUType: "t4", PerHourMicros: 1}, {GPUType: "t4", Region: "eu", PerHourMicros: 2}}}}, "two rates for t4 in eu"},
	} {
		err := metering.ValidateCards(c.cards)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ValidateCards(%s) = %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

func TestMonth(t *testing.T) {
	for _, c := range []struct {
		at   time.Time
		want string
	}{
		{time.Date(2026, 11, 30, 23, 59, 59, 999999999, time.UTC), "2026-11"},
		{time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), "2026-12"},
		// 2026-11-30 20:30 in UTC-5 is December in UTC.
		{time.Date(2026, 11, 30, 20, 30, 0, 0, time.FixedZone("UTC-5", -5*3600)), "2026-12"},
		// 2027-01-01 08:00 in UTC+9 is still December in UTC.
		{time.Date(2027, 1, 1, 8, 0, 0, 0, time.FixedZone("UTC+9", 9*3600)), "2026-12"},
	} {
		if got := metering.Month(c.at); got != c.want {
			t.Errorf("Month(%v) = %s, want %s", c.at, got, c.want)
		}
	}
	for _, c := range []struct {
		month    string
		from, to time.Time
	}{
		{"2026-11", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-12", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"2028-02", time.Date(2028, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC)},
	} {
		from, to, err := metering.MonthBounds(c.month)
		if err != nil || from != c.from || to != c.to {
			t.Errorf("MonthBounds(%s) = %v, %v, %v; want %v, %v", c.month, from, to, err, c.from, c.to)
		}
	}
	for _, bad := range []string{"", "2026", "2026-13", "2026-00", "2026-1", "26-11", "2026-11-01", "2026/11", " 2026-11", "2026-11 ", "+2026-11", "２０２６-11", "November"} {
		if _, _, err := metering.MonthBounds(bad); err == nil {
			t.Errorf("MonthBounds(%q) succeeded", bad)
		}
	}
}

func FuzzMonthBounds(f *testing.F) {
	for _, s := range []string{"2026-11", "0000-01", "9999-12", "2026-13", "2026-1", "", "-001-01", "2026-11\n", "1970-01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, month string) {
		from, to, err := metering.MonthBounds(month)
		if err != nil {
			if !from.IsZero() || !to.IsZero() {
				t.Errorf("MonthBounds(%q) = %v, %v with error %v", month, from, to, err)
			}
			return
		}
		if metering.Month(from) != month || metering.Month(to.Add(-time.Nanosecond)) != month || metering.Month(to) == month {
			t.Errorf("MonthBounds(%q) = [%v, %v): not that month", month, from, to)
		}
		if from.Location() != time.UTC || from.Day() != 1 || from.Hour() != 0 || from.Minute() != 0 || from.Second() != 0 || from.Nanosecond() != 0 {
			t.Errorf("MonthBounds(%q) from = %v, not the start of a month in UTC", month, from)
		}
		if to != from.AddDate(0, 1, 0) {
			t.Errorf("MonthBounds(%q) to = %v, want %v", month, to, from.AddDate(0, 1, 0))
		}
	})
}

// entries of the report tests: usage priced as in cards.
var (
	oct31 = time.Date(2025, 10, 31, 23, 0, 0, 0, time.UTC)
	nov1  = time.Date(2025, 11, 1, 10, 0, 0, 0, time.UTC)
	nov30 = time.Date(2025, 11, 30, 23, 30, 0, 0, time.UTC)
	usage = []store.UsageEntry{
		// 2 h across midnight into November.
		{SessionID: "s1", GPUID: "g0", User: "alice", Project: "ml", GPUType: "t4", Start: oct31, End: oct31.Add(2 * time.Hour), CostMicros: 800_000, Currency: "USD"},
		// 1.5 h on November 1.
		{SessionID: "s2", GPUID: "g1", User: "bob", Project: "ml", GPUType: "a100", Start: nov1, End: nov1.Add(90 * time.Minute), CostMicros: 4_350_000, Currency: "USD"},
		// 1 h across midnight out of November.
		{SessionID: "s3", GPUID: "g0", User: "alice", Project: "cv", GPUType: "t4", Start: nov30, End: nov30.Add(time.Hour), CostMicros: 400_000, Currency: "USD"},
		// No length: counts for nothing.
		{SessionID: "s4", GPUID: "g0", User: "carol", Project: "cv", GPUType: "t4", Start: nov1, End: nov1, Currency: "USD"},
	}
)

func TestAggregate(t *testing.T) {
	novFrom, novTo, err := metering.MonthBounds("2025-11")
	if err != nil {
		t.Fatal(err)
	}
	row := func(key string, seconds float64, cost int64) metering.Row {
		return metering.Row{Key: key, GPUSeconds: seconds, GPUHours: seconds / 3600, CostMicros: cost, Currency: "USD"}
	}
	for _, c := range []struct {
		name     string
		by       string
		from, to time.Time
		want     []metering.Row
	}{
		{"by day", metering.ByDay, time.Time{}, time.Time{}, []metering.Row{
			row("2025-10-31", 3600, 400_000),
			row("2025-11-01", 3600+5400, 400_000+4_350_000),
			row("2025-11-30", 1800, 200_000),
			row("2025-12-01", 1800, 200_000),
		}},
		{"by day in November", metering.ByDay, novFrom, novTo, []metering.Row{
			row("2025-11-01", 9000, 4_750_000),
			row("2025-11-30", 1800, 200_000),
		}},
		{"by user in November", metering.ByUser, novFrom, novTo, []metering.Row{
			row("alice", 3600+1800, 400_000+200_000),
			row("bob", 5400, 4_350_000),
		}},
		{"by project in November", metering.ByProject, novFrom, novTo, []metering.Row{
			row("cv", 1800, 200_000),
			row("ml", 3600+5400, 400_000+4_350_000),
		}},
		{"by GPU type", metering.ByGPUType, time.Time{}, time.Time{}, []metering.Row{
			row("a100", 5400, 4_350_000),
			row("t4", 7200+3600, 1_200_000),
		}},
		// s1 ended before nov1.
		{"from only", metering.ByProject, nov1, time.Time{}, []metering.Row{
			row("cv", 3600, 400_000),
			row("ml", 5400, 4_350_000),
		}},
		{"until only", metering.ByProject, time.Time{}, nov1, []metering.Row{
			row("ml", 7200, 800_000),
		}},
		// 15 of s2's 90 minutes.
		{"inside one entry", metering.ByUser, nov1.Add(30 * time.Minute), nov1.Add(45 * time.Minute), []metering.Row{
			row("bob", 900, 725_000),
		}},
		{"nothing in the window", metering.ByUser, novTo.AddDate(1, 0, 0), time.Time{}, nil},
		{"an empty window", metering.ByUser, nov1, nov1, nil},
	} {
		got, err := metering.Aggregate(usage, c.by, c.from, c.to)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: Aggregate =\n%+v, %v; want\n%+v", c.name, got, err, c.want)
		}
	}
	if got, err := metering.Aggregate(nil, metering.ByDay, time.Time{}, time.Time{}); err != nil || got != nil {
		t.Errorf("Aggregate(none) = %+v, %v", got, err)
	}
}

func TestAggregateErrors(t *testing.T) {
	if _, err := metering.Aggregate(usage, "week", time.Time{}, time.Time{}); err == nil {
		t.Error("Aggregate(by week) succeeded")
	}
	backwards := []store.UsageEntry{{SessionID: "s", Start: nov1, End: nov1.Add(-time.Second)}}
	if _, err := metering.Aggregate(backwards, metering.ByDay, time.Time{}, time.Time{}); err == nil {
		t.Error("Aggregate(an entry ending before its start) succeeded")
	}
	mixed := append([]store.UsageEntry{}, usage...)
	mixed = append(mixed, store.UsageEntry{SessionID: "s5", Start: nov1, End: nov1.Add(time.Hour), CostMicros: 1, Currency: "EUR"})
	if _, err := metering.Aggregate(mixed, metering.ByUser, time.Time{}, time.Time{}); err == nil || !strings.Contains(err.Error(), "EUR") {
		t.Errorf("Aggregate(two currencies) = %v, want an error naming them", err)
	}
	// Outside the window, another currency does not matter.
	if _, err := metering.Aggregate(mixed, metering.ByUser, time.Time{}, nov1); err != nil {
		t.Errorf("Aggregate(another currency outside the window) = %v", err)
	}
	// Free usage, without a currency, goes with any.
	free := append([]store.UsageEntry{}, usage...)
	free = append(free, store.UsageEntry{SessionID: "s5", User: "dave", Start: nov1, End: nov1.Add(time.Hour)})
	rows, err := metering.Aggregate(free, metering.ByUser, time.Time{}, time.Time{})
	if err != nil || len(rows) != 3 || rows[2] != (metering.Row{Key: "dave", GPUSeconds: 3600, GPUHours: 1, Currency: "USD"}) {
		t.Errorf("Aggregate(free usage) = %+v, %v; want dave's hour at 0 USD", rows, err)
	}
}

// TestProRating checks that the parts of an entry add up to its cost to
// the micro, however the window and the days cut it.
func TestProRating(t *testing.T) {
	// Three days and a bit, at a cost that does not divide.
	start := time.Date(2025, 3, 1, 7, 13, 0, 123, time.UTC)
	e := store.UsageEntry{SessionID: "s", User: "alice", Start: start, End: start.Add(75*time.Hour + 17*time.Second), CostMicros: 1_000_001, Currency: "USD"}
	rows, err := metering.Aggregate([]store.UsageEntry{e}, metering.ByDay, time.Time{}, time.Time{})
	if err != nil || len(rows) != 4 {
		t.Fatalf("Aggregate = %+v, %v; want 4 days", rows, err)
	}
	if total := metering.Total(rows); total.CostMicros != e.CostMicros || math.Abs(total.GPUSeconds-e.End.Sub(e.Start).Seconds()) > 1e-6 {
		t.Errorf("days add up to %+v; want %d micros, %v", total, e.CostMicros, e.End.Sub(e.Start))
	}
	// Cut anywhere: the two sides add up to the whole, by day as by user.
	r := rand.New(rand.NewPCG(1, 2))
	whole := e.End.Sub(e.Start)
	for range 1000 {
		cut := e.Start.Add(time.Duration(r.Int64N(int64(whole))))
		var sum int64
		for _, w := range [][2]time.Time{{{}, cut}, {cut, {}}} {
			byUser, byDay := totalCost(t, e, metering.ByUser, w[0], w[1]), totalCost(t, e, metering.ByDay, w[0], w[1])
			if byUser != byDay {
				t.Fatalf("window %v: %d by user, %d by day", w, byUser, byDay)
			}
			sum += byUser
		}
		if sum != e.CostMicros {
			t.Fatalf("cut at %v: the sides cost %d together, want %d", cut, sum, e.CostMicros)
		}
	}
}

func totalCost(t *testing.T, e store.UsageEntry, by string, from, to time.Time) int64 {
	t.Helper()
	rows, err := metering.Aggregate([]store.UsageEntry{e}, by, from, to)
	if err != nil {
		t.Fatal(err)
	}
	return metering.Total(rows).CostMicros
}

func TestTotal(t *testing.T) {
	rows := []metering.Row{
		{Key: "a", GPUSeconds: 5400, GPUHours: 1.5, CostMicros: 3, Currency: "USD"},
		{Key: "b", GPUSeconds: 1800, GPUHours: 0.5, CostMicros: 4, Currency: "USD"},
	}
	want := metering.Row{Key: "total", GPUSeconds: 7200, GPUHours: 2, CostMicros: 7, Currency: "USD"}
	if got := metering.Total(rows); got != want {
		t.Errorf("Total = %+v, want %+v", got, want)
	}
	if got := metering.Total(nil); got != (metering.Row{Key: "total"}) {
		t.Errorf("Total(none) = %+v", got)
	}
}

func TestWriteCSV(t *testing.T) {
	for _, by := range metering.Groupings {
		rows, err := metering.Aggregate(usage, by, time.Time{}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := metering.WriteCSV(&buf, rows, by); err != nil {
			t.Fatal(err)
		}
		records, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatalf("by %s: %v\n%s", by, err, buf.String())
		}
		header := []string{strings.ReplaceAll(by, "-", "_"), "gpu_seconds", "gpu_hours", "cost", "currency"}
		if len(records) != len(rows)+1 || !reflect.DeepEqual(records[0], header) {
			t.Fatalf("by %s: CSV\n%s\nwant the header %v and %d rows", by, buf.String(), header, len(rows))
		}
		// The totals are the ledger's: the cost to the micro.
		var cost, wantCost int64
		var seconds, hours, wantSeconds float64
		for _, e := range usage {
			wantCost += e.CostMicros
			wantSeconds += e.End.Sub(e.Start).Seconds()
		}
		for i, rec := range records[1:] {
			if rec[0] != rows[i].Key || rec[4] != "USD" {
				t.Errorf("by %s: row %v, want key %s in USD", by, rec, rows[i].Key)
			}
			c, err := metering.ParseMicros(rec[3])
			if err != nil {
				t.Fatal(err)
			}
			s, err1 := strconv.ParseFloat(rec[1], 64)
			h, err2 := strconv.ParseFloat(rec[2], 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("by %s: row %v: %v %v", by, rec, err1, err2)
			}
			cost, seconds, hours = cost+c, seconds+s, hours+h
		}
		if cost != wantCost || seconds != wantSeconds || math.Abs(hours-wantSeconds/3600) > 1e-9 {
			t.Errorf("by %s: CSV totals %d micros, %v s, %v h; want %d, %v, %v", by, cost, seconds, hours, wantCost, wantSeconds, wantSeconds/3600)
		}
	}
}

func TestWriteCSVFormat(t *testing.T) {
	rows := []metering.Row{
		{Key: "a, \"quoted\" key", GPUSeconds: 1.0005, GPUHours: 1.0005 / 3600, CostMicros: 12_345_678, Currency: "USD"},
		{Key: "b", GPUSeconds: 0, GPUHours: 0, CostMicros: 7, Currency: "USD"},
	}
	var buf bytes.Buffer
	if err := metering.WriteCSV(&buf, rows, metering.ByGPUType); err != nil {
		t.Fatal(err)
	}
	want := "gpu_type,gpu_seconds,gpu_hours,cost,currency\n" +
		"\"a, \"\"quoted\"\" key\",1.000,0.000278,12.345678,USD\n" +
		"b,0.000,0.000000,0.000007,USD\n"
	if buf.String() != want {
		t.Errorf("WriteCSV =\n%s\nwant\n%s", buf.String(), want)
	}
	if err := metering.WriteCSV(&buf, rows, "week"); err == nil {
		t.Error("WriteCSV(by week) succeeded")
	}
}

func TestMicros(t *testing.T) {
	for _, c := range []struct {
		micros int64
		text   string
	}{
		{0, "0.000000"},
		{1, "0.000001"},
		{-1, "-0.000001"},
		{350_000, "0.350000"},
		{12_345_678, "12.345678"},
		{-12_345_678, "-12.345678"},
		{math.MaxInt64, "9223372036854.775807"},
		{math.MinInt64, "-9223372036854.775808"},
	} {
		if got := metering.FormatMicros(c.micros); got != c.text {
			t.Errorf("FormatMicros(%d) = %s, want %s", c.micros, got, c.text)
		}
		if got, err := metering.ParseMicros(c.text); err != nil || got != c.micros {
			t.Errorf("ParseMicros(%s) = %d, %v; want %d", c.text, got, err, c.micros)
		}
	}
	for text, want := range map[string]int64{"0.35": 350_000, "12": 12_000_000, "-0": 0, "007.5": 7_500_000, "1.000001": 1_000_001} {
		if got, err := metering.ParseMicros(text); err != nil || got != want {
			t.Errorf("ParseMicros(%s) = %d, %v; want %d", text, got, err, want)
		}
	}
	for _, bad := range []string{"", "-", ".5", "5.", "1.0000001", "1e3", "+1", " 1", "1,5", "0x10", "9223372036854.775808", "-9223372036854.775809", "1.-5", "--1", "NaN"} {
		if got, err := metering.ParseMicros(bad); err == nil {
			t.Errorf("ParseMicros(%q) = %d, want an error", bad, got)
		}
	}
}

func FuzzMicros(f *testing.F) {
	for _, s := range []string{"0.35", "-12.345678", "9223372036854.775807", "1.0000001", ""} {
		f.Add(s, int64(0))
	}
	f.Fuzz(func(t *testing.T, text string, micros int64) {
		if got, err := metering.ParseMicros(metering.FormatMicros(micros)); err != nil || got != micros {
			t.Errorf("ParseMicros(FormatMicros(%d)) = %d, %v", micros, got, err)
		}
		v, err := metering.ParseMicros(text)
		if err != nil {
			return
		}
		if again, err := metering.ParseMicros(metering.FormatMicros(v)); err != nil || again != v {
			t.Errorf("ParseMicros(%q) = %d, which formats as %s, which parses as %d, %v", text, v, metering.FormatMicros(v), again, err)
		}
		if f, err := strconv.ParseFloat(text, 64); err != nil || math.Abs(f*1e6-float64(v)) > math.Max(1, math.Abs(f))*1e-3 {
			t.Errorf("ParseMicros(%q) = %d; as a float it is %v, %v", text, v, f, err)
		}
	})
}
