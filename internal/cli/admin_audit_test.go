package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

func TestParseSince(t *testing.T) {
	t.Parallel()
	loc := time.FixedZone("CEST", 2*60*60)
	now := time.Date(2024, 5, 10, 12, 0, 0, 0, loc)
	for _, tc := range []struct {
		in   string
		want time.Time
		err  string // start of the error, if any
	}{
		{in: "", want: time.Time{}},
		{in: "2024-05-01T09:00:00Z", want: time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)},
		{in: "2024-05-01T09:00:00.5+02:00", want: time.Date(2024, 5, 1, 7, 0, 0, 5e8, time.UTC)},
		{in: "2024-05-01", want: time.Date(2024, 5, 1, 0, 0, 0, 0, loc)},
		{in: "1h", want: now.Add(-time.Hour)},
		{in: " 90m ", want: now.Add(-90 * time.Minute)},
		{in: "1h30m", want: now.Add(-90 * time.Minute)},
		{in: "7d", want: now.Add(-7 * 24 * time.Hour)},
		{in: "0s", want: now},
		{in: "yesterday", err: `--since "yesterday" is neither a time nor a duration`},
		{in: "2024-05-01 09:00", err: `--since "2024-05-01 09:00" is neither a time nor a duration`},
		{in: "2024-05-01T09:00:00", err: `--since "2024-05-01T09:00:00" is neither`},
		{in: "1.5d", err: `--since "1.5d" is neither`},
		{in: "-1h", err: `--since "-1h" is a negative duration`},
	} {
		got, err := parseSince(tc.in, now)
		switch {
		case tc.err != "":
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("parseSince(%q) error = %v, want %q...", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("parseSince(%q): %v", tc.in, err)
		case !got.Equal(tc.want):
			t.Errorf("parseSince(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestAuditChange(t *testing.T) {
	t.Parallel()
	obj := func(s string) any { // as sdk.AuditEvent decodes Before and After
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name          string
		before, after any
		width         int
		want          string
	}{
		{"nothing", nil, nil, 60, "-"},
		{"created", nil, obj(`{"name":"alice","org_admin":false}`), 60, `{"name":"alice","org_admin":false}`},
		{"deleted", obj(`{"name":"ml"}`), nil, 60, `was {"name":"ml"}`},
		{"nested settings", obj(`{"name":"ml","settings":{"max_gpus":4,"shell_mode":"shared"}}`),
			obj(`{"name":"ml","settings":{"max_gpus":8,"gpu_types":["t4"]}}`), 100,
			`settings.gpu_types: →["t4"], settings.max_gpus: 4→8, settings.shell_mode: shared→`},
		{"no difference", obj(`{"a":1}`), obj(`{"a":1}`), 60, "no change"},
		{"a Go value", nil, sdk.Member{User: "bob", Role: "admin"}, 60, `{"user":"bob","role":"admin"}`},
		{"scalars", obj(`"x"`), obj(`"y"`), 60, `"y"`},
		{"truncated", nil, obj(`{"name":"a-very-long-name"}`), 12, `{"name":"a-…`},
		{"no tabs", obj(`{"s":"a"}`), obj("{\"s\":\"a\\tb\"}"), 60, "s: a→a b"},
	} {
		e := sdk.AuditEvent{Before: tc.before, After: tc.after}
		if got := auditChange(e, tc.width); got != tc.want {
			t.Errorf("%s: auditChange = %q, want %q", tc.name, got, tc.want)
		}
	}
}
