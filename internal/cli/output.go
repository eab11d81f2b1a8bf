package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/devgpu/devgpu/internal/names"
)

// printJSON writes v as indented JSON on stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns on stdout; call Flush when done.
func table(header ...any) *tabwriter.Writer {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	row(tw, header...)
	return tw
}

// row writes one line of a table. Every column is escaped (names.Escape):
// names and text come from the server, and a control character in them
// must show as \x1b, never act on the terminal or break the columns.
func row(w io.Writer, cols ...any) {
	for i, c := range cols {
		if i > 0 {
			fmt.Fprint(w, "\t")
		}
		fmt.Fprint(w, names.Escape(fmt.Sprint(c)))
	}
	fmt.Fprintln(w)
}

// ago renders a time relative to now for tables; "-" when unset.
func ago(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return time.Since(*t).Round(time.Second).String() + " ago"
}
