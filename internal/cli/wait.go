package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

func newWaitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "wait ID|NAME",
		Short: "Wait for a detached run to end and exit with its exit status",
		Long: `Wait until a detached run (devgpu run --detach) ends, then exit with its
command's exit status (128+n when signal n killed it). A run that ended
before its command exited (its maximum lifetime, a stop, a lost session) has
no exit status: devgpu then says why it ended and exits 255. A run is named
by its id or by its --name (your most recent run of that name).`,
		Example: `  devgpu wait train-1 && echo trained`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			sess, err := sessionByRef(cmd.Context(), client, args[0])
			if err != nil {
				return err
			}
			if !sess.Detached() {
				return fmt.Errorf("session %s is not a detached run, so it has no exit status to wait for; `devgpu run --detach -- CMD` starts one", sess.ID)
			}
			if sess.Active() {
				status := newStatusLine()
				status.since = time.Now()
				status.set("waiting for run " + sess.ID + " to end")
				sess, err = client.WaitExit(cmd.Context(), sess.ID)
				status.done()
				if err != nil {
					return err
				}
			}
			return runExit(sess)
		},
	}
}

// runExit is devgpu's result for a detached run that ended: its exit
// status, or, when it has none, why it ended.
func runExit(s sdk.Session) error {
	switch {
	case s.ExitStatus == nil:
		return fmt.Errorf("%s, before its command exited, so it has no exit status", endMessage(s))
	case s.ExitSignal != "":
		fmt.Fprintf(os.Stderr, "devgpu: run %s was killed by signal %s\n", s.ID, s.ExitSignal)
	}
	if *s.ExitStatus == 0 {
		return nil
	}
	return exitStatus(*s.ExitStatus)
}
