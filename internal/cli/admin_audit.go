package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

// changeWidth is the most runes the audit table's CHANGE column shows.
const changeWidth = 60

func newAdminAuditCmd() *cobra.Command {
	var (
		asJSON                               bool
		project, actor, action, since, until string
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: policy changes and session starts and stops, who and when",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			from, err := parseSince(since, now)
			if err != nil {
				return err
			}
			to, err := parseWhen("until", until, now)
			if err != nil {
				return err
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			events, err := client.Audit(cmd.Context(), sdk.AuditFilter{Project: project, Actor: actor, Action: action, Since: from, Until: to})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(events)
			}
			tw := table("TIME", "ACTOR", "ACTION", "PROJECT", "TARGET", "CHANGE")
			for _, e := range events {
				row(tw, e.At.Local().Format(time.DateTime), e.Actor, e.Action, orDash(e.Project), orDash(e.Target), auditChange(e, changeWidth))
			}
			return tw.Flush()
		},
	}
	jsonFlag(cmd, &asJSON)
	cmd.Flags().StringVar(&project, "project", "", "only the entries about this project")
	cmd.Flags().StringVar(&actor, "actor", "", "only the entries of this actor: a user name, or system for the control plane")
	cmd.Flags().StringVar(&action, "action", "", "only the entries of this action (session.end), or of every action beginning with it when it ends in . or * (session.)")
	cmd.Flags().StringVar(&since, "since", "", "only the entries from this time on (RFC 3339, e.g. 2024-05-01T09:00:00Z, or a date) or this long ago (e.g. 90m, 24h, 7d)")
	cmd.Flags().StringVar(&until, "until", "", "only the entries before this time, given as --since is")
	return cmd
}

// parseSince reads --since: an RFC 3339 time, a date (midnight, local
// time), or a duration back from now such as 1h or 7d. Empty is the zero
// time, no limit.
func parseSince(s string, now time.Time) (time.Time, error) {
	return parseWhen("since", s, now)
}

// parseWhen reads a time flag the way parseSince describes.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, s, now.Location()); err == nil {
		return t, nil
	}
	d, err := parseDays(s)
	switch {
	case err != nil:
		return time.Time{}, fmt.Errorf("--%s %q is neither a time nor a duration; give one such as 2024-05-01T09:00:00Z, 2024-05-01, 1h or 7d", flag, s)
	case d < 0:
		return time.Time{}, fmt.Errorf("--%s %q is a negative duration; give how long ago, such as 1h", flag, s)
	}
	return now.Add(-d), nil
}

// parseDays reads a duration as time.ParseDuration does, or a whole
// number of days such as 7d.
func parseDays(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok && err != nil {
		if n, aerr := strconv.Atoi(days); aerr == nil {
			d, err = time.Duration(n)*24*time.Hour, nil
		}
	}
	return d, err
}

// auditChange summarises an audit entry's change in at most width runes:
// the fields that differ, as "field: before→after", when both sides are
// objects; else the value after (or "was" the value before).
func auditChange(e sdk.AuditEvent, width int) string {
	var s string
	before, after := flatten(e.Before), flatten(e.After)
	switch {
	case before != nil && after != nil:
		s = diff(before, after)
	case e.After != nil:
		s = compactJSON(e.After)
	case e.Before != nil:
		s = "was " + compactJSON(e.Before)
	default:
		return "-"
	}
	return truncate(s, width)
}

// flatten returns the leaves of a JSON object by dotted path, rendered
// compactly, or nil if v is not an object.
func flatten(v any) map[string]string {
	m, ok := toObject(v)
	if !ok {
		return nil
	}
	out := map[string]string{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
				walk(prefix+k+".", sub)
				continue
			}
			out[prefix+k] = leaf(v)
		}
	}
	walk("", m)
	return out
}

// toObject returns v as a decoded JSON object, whatever Go type holds it.
func toObject(v any) (map[string]any, bool) {
	if v == nil {
		return nil, false
	}
	if m, ok := v.(map[string]any); ok {
		return m, true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, false
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil || m == nil {
		return nil, false
	}
	return m, true
}

func leaf(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return compactJSON(v)
}

func diff(before, after map[string]string) string {
	keys := map[string]bool{}
	for k := range before {
		keys[k] = true
	}
	for k := range after {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var parts []string
	for _, k := range sorted {
		b, inB := before[k]
		a, inA := after[k]
		if inA && inB && a == b {
			continue
		}
		parts = append(parts, k+": "+b+"→"+a)
	}
	if len(parts) == 0 {
		return "no change"
	}
	return strings.Join(parts, ", ")
}

func compactJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// truncate cuts s to at most width runes, ending in "…" when cut, with
// tabs and line breaks turned into spaces so the table keeps its shape.
func truncate(s string, width int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	r := []rune(s)
	if len(r) <= width {
		return s
	}
	return string(r[:width-1]) + "…"
}
