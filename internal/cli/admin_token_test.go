package cli

import (
	"testing"
	"time"
)

func TestExpires(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 10, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	for _, tc := range []struct {
		at   *time.Time
		want string
	}{
		{nil, "never"},
		{at(30 * 24 * time.Hour), "in 30d"},
		{at(47 * time.Hour), "in 47h"},
		{at(90 * time.Minute), "in 90m"},
		{at(90 * time.Second), "in 90s"},
		{at(-3 * 24 * time.Hour), "3d ago"},
		{at(0), "0s ago"},
	} {
		if got := expires(tc.at, now); got != tc.want {
			t.Errorf("expires(%v) = %q, want %q", tc.at, got, tc.want)
		}
	}
}
