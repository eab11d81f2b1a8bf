package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func newSessionsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sessions", Short: "List and stop your GPU sessions"}
	var all, asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List your sessions (organisation admins: --all for everyone's)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			sessions, err := client.ListSessions(cmd.Context(), all)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sessions)
			}
			tw := table("ID", "PROJECT", "USER", "STATE", "GPU", "DEVICES", "SHELLS", "CREATED", "ENDED")
			for _, s := range sessions {
				state := s.State
				if s.EndReason != "" {
					state += " (" + s.EndReason + ")"
				}
				row(tw, s.ID, s.Project, s.User, state, s.GPUType+"@"+s.Region, strings.Join(s.GPUs, ","),
					s.Attachments, ago(&s.CreatedAt), ago(s.EndedAt))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&all, "all", false, "everyone's sessions (organisation admins)")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	stop := &cobra.Command{
		Use:   "stop ID",
		Short: "End a session now and free its GPU",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			s, err := client.StopSession(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "session %s %s (%s)\n", s.ID, s.State, s.EndReason)
			return nil
		},
	}
	cmd.AddCommand(list, stop)
	return cmd
}
