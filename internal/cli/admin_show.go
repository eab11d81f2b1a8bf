package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/devgpu/devgpu/sdk"
)

// formatObject renders the settings whose values are objects (budget,
// workspace) as words, as `project show` prints them; ok is false for
// the others.
func formatObject(name string, v map[string]any) (string, bool) {
	switch name {
	case "budget":
		return formatBudget(v), true
	case "workspace":
		if on, _ := v["enabled"].(bool); !on {
			return "off", true
		}
		if limit, _ := v["limit_bytes"].(float64); limit > 0 {
			return "on, " + humanize.Bytes(uint64(limit)) + " per user", true
		}
		return "on, no size limit", true
	}
	return "", false
}

// formatBudget reads a budget such as "500 a month (rate card currency),
// warn at 50%, 80%; at 100% refuse new sessions".
func formatBudget(v map[string]any) string {
	amount, _ := v["amount"].(float64)
	if amount == 0 {
		return "none"
	}
	var b strings.Builder
	b.WriteString(strconv.FormatFloat(amount, 'f', -1, 64))
	if unit, _ := v["unit"].(string); unit == sdk.BudgetGPUHours {
		b.WriteString(" GPU-hours a month")
	} else {
		b.WriteString(" a month (rate card currency)")
	}
	if th, _ := v["thresholds"].([]any); len(th) > 0 {
		parts := make([]string, len(th))
		for i, t := range th {
			parts[i] = fmt.Sprintf("%v%%", t)
		}
		b.WriteString(", warn at " + strings.Join(parts, ", "))
	}
	if action, _ := v["action"].(string); action == sdk.BudgetStop {
		b.WriteString("; at 100% stop running sessions")
	} else {
		b.WriteString("; at 100% refuse new sessions")
	}
	return b.String()
}
