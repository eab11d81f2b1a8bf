package cli

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/names"
	"github.com/devgpu/devgpu/sdk"
)

func newSessionsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sessions", Short: "List and stop your GPU sessions"}
	var all, allUsers, asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List your active sessions (--all: ended ones too; --all-users: everyone's)",
		Long: `List your sessions that have not ended: requested, queued, starting,
running and stopping. --all adds the ended and failed ones. Organisation
admins see everyone's sessions with --all-users.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			sessions, err := client.Sessions(cmd.Context(), sdk.SessionQuery{AllUsers: allUsers, ActiveOnly: !all})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sessions)
			}
			if len(sessions) == 0 && !all {
				fmt.Fprintln(os.Stderr, "devgpu: no active sessions; --all lists ended ones too")
				return nil
			}
			tw := table("ID", "NAME", "PROJECT", "USER", "STATE", "EXIT", "GPU", "DEVICES", "SHELLS", "CREATED", "ENDED")
			for _, s := range sessions {
				state := s.State
				if s.EndReason != "" {
					state += " (" + s.EndReason + ")"
				}
				row(tw, s.ID, orDefault(s.Name, "-"), s.Project, s.User, state, exitColumn(s), gpuColumn(s), strings.Join(s.GPUs, ","),
					s.Attachments, ago(&s.CreatedAt), ago(s.EndedAt))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&all, "all", false, "ended and failed sessions too")
	list.Flags().BoolVar(&allUsers, "all-users", false, "everyone's sessions, not just yours (organisation admins)")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var reason string
	stop := &cobra.Command{
		Use:   "stop ID|NAME",
		Short: "End a session now and free its GPU",
		Long: `End a session now and free its GPU. --reason (up to 200 characters) is
recorded in the audit log and shown in the session's open shells.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			s, err := client.StopSessionWithReason(cmd.Context(), args[0], reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "session %s %s (%s)\n", s.ID, s.State, s.EndReason)
			return nil
		},
	}
	stop.Flags().StringVar(&reason, "reason", "", "why it is stopped: recorded in the audit log and shown in its shells")
	cmd.AddCommand(list, stop)
	return cmd
}

// exitColumn is a session's EXIT in a table: the signal that killed its
// command (such as KILL), else its exit status, else "-" (not a detached
// run, or one without an exit status yet).
func exitColumn(s sdk.Session) string {
	switch {
	case s.ExitSignal != "":
		return s.ExitSignal
	case s.ExitStatus != nil:
		return strconv.Itoa(*s.ExitStatus)
	}
	return "-"
}

// sessionByRef returns the session ref names: its id, or the name of a
// detached run of the caller's (the server takes either, a name meaning
// the caller's most recent run of that name).
func sessionByRef(ctx context.Context, client *sdk.Client, ref string) (sdk.Session, error) {
	s, err := client.Session(ctx, ref)
	if sdk.IsStatus(err, http.StatusNotFound) {
		return s, fmt.Errorf("no session or run named %s; `devgpu sessions list --all` shows yours", names.Escape(ref))
	}
	return s, err
}

// gpuColumn is a session's GPU type and region as TYPE@REGION, or what
// of them it has: a queued run has none yet, or only the type it asked for.
func gpuColumn(s sdk.Session) string {
	switch {
	case s.GPUType != "" && s.Region != "":
		return s.GPUType + "@" + s.Region
	case s.GPUType != "":
		return s.GPUType
	case s.Region != "":
		return "any@" + s.Region
	}
	return "-"
}
