package cli

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/metering"
	"github.com/devgpu/devgpu/sdk"
)

func newUsageCmd() *cobra.Command {
	var q sdk.UsageQuery
	var since, until, format string
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "GPU usage and cost: yours, your projects' (project admins) or everyone's (org admins)",
		Long: `Report GPU-seconds, GPU-hours and cost over a period (default: this month so far),
grouped by day, user, project or GPU type. Running sessions count up to now.
The CSV has one row per group and reconciles exactly with the usage ledger.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			var err error
			if q.Since, err = parseWhen("since", since, now); err != nil {
				return err
			}
			if q.Until, err = parseWhen("until", until, now); err != nil {
				return err
			}
			if format != "table" && format != "csv" && format != "json" {
				return fmt.Errorf("--format %q is not table, csv or json", format)
			}
			client, _, err := newClient()
			if err != nil {
				return err
			}
			r, err := client.Usage(cmd.Context(), q)
			if err != nil {
				return err
			}
			switch format {
			case "json":
				return printJSON(r)
			case "csv":
				return metering.WriteCSV(os.Stdout, metering.ReportRows(r), r.By)
			}
			tw := table(usageHeader(r.By), "GPU-HOURS", "COST "+r.Currency)
			for _, u := range append(r.Rows, sdk.UsageRow{Key: "total", GPUHours: r.Total.GPUHours, CostMicros: r.Total.CostMicros}) {
				row(tw, u.Key, strconv.FormatFloat(u.GPUHours, 'f', 3, 64), metering.FormatMicros(u.CostMicros))
			}
			fmt.Fprintf(os.Stderr, "usage from %s to %s\n", r.From.Local().Format(time.DateTime), r.To.Local().Format(time.DateTime))
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVarP(&q.Project, "project", "p", "", "only this project")
	f.StringVar(&q.User, "user", "", "only this user")
	f.StringVar(&since, "since", "", "from this time (RFC 3339, a date, or how long ago such as 7d; default: the start of this month, UTC)")
	f.StringVar(&until, "until", "", "until this time (default: now)")
	f.StringVar(&q.By, "by", "project", "group by day, user, project or gpu-type")
	f.StringVar(&format, "format", "table", "table, csv or json")
	return cmd
}

func usageHeader(by string) string {
	if by == "gpu-type" {
		return "GPU-TYPE"
	}
	return map[string]string{"day": "DAY", "user": "USER", "project": "PROJECT"}[by]
}
