package cli

import (
	"context"
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
				if sess, err = waitEnd(cmd.Context(), client, sess.ID); err != nil {
					return err
				}
			}
			return runExit(sess)
		},
	}
}

// waitEnd waits for run id to end, showing that it waits, and saying so
// on stderr while the server does not answer and when it is back.
func waitEnd(ctx context.Context, client *sdk.Client, id string) (sdk.Session, error) {
	start := time.Now()
	var waiting *statusLine // nil while the server is away
	wait := func() {
		waiting = newStatusLine()
		waiting.since = start
		waiting.set("waiting for run " + id + " to end")
	}
	away := serverAway{
		msg:  "the server is unreachable; waiting for it to come back",
		back: "the server is back; still waiting for run " + id + " to end",
	}
	defer func() {
		away.quiet()
		if waiting != nil {
			waiting.done()
		}
	}()
	wait()
	return client.WaitExitReporting(ctx, id, func(err error) {
		if err == nil {
			away.answered()
			wait()
			return
		}
		waiting.done()
		waiting = nil
		away.lost(time.Now(), false)
	})
}

// runExit is devgpu's result for a detached run that ended: its exit
// status, or, when it has none, why it ended.
func runExit(s sdk.Session) error {
	switch {
	case s.ExitStatus == nil && s.StartedAt == nil:
		return fmt.Errorf("run %s never started: %s", s.ID, endCause(s))
	case s.ExitStatus == nil:
		return fmt.Errorf("run %s has no exit status: %s", s.ID, endCause(s))
	case s.ExitSignal != "":
		fmt.Fprintf(os.Stderr, "devgpu: run %s was killed by signal %s\n", s.ID, s.ExitSignal)
	}
	if *s.ExitStatus == 0 {
		return nil
	}
	return exitStatus(*s.ExitStatus)
}
