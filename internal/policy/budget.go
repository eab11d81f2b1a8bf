package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/devgpu/devgpu/sdk"
)

// BudgetFields are the parts of a budget an update may name, so that it
// changes only those (sdk.ProjectUpdate.BudgetFields).
var BudgetFields = []string{"amount", "unit", "thresholds", "action"}

// MergeBudget returns base with the fields of u that fields names: an
// update of the amount alone keeps the unit, thresholds and action.
func MergeBudget(base, u sdk.Budget, fields []string) (sdk.Budget, error) {
	out := base
	out.Thresholds = slices.Clone(base.Thresholds)
	for _, f := range fields {
		switch f {
		case "amount":
			out.Amount = u.Amount
		case "unit":
			out.Unit = u.Unit
		case "thresholds":
			out.Thresholds = slices.Clone(u.Thresholds)
		case "action":
			out.Action = u.Action
		default:
			return base, fmt.Errorf("budget field %q is unknown; budget fields are %s", f, strings.Join(BudgetFields, ", "))
		}
	}
	return out, ValidateBudget(out)
}
