package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

// detachFlags are run's flags for a detached run.
type detachFlags struct {
	detach bool
	name   string
}

func (d *detachFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVarP(&d.detach, "detach", "d", false, "start the command and return at once; it runs with no client attached (see devgpu logs and devgpu wait)")
	fl.StringVar(&d.name, "name", "", "a name for the detached run, usable instead of its id (letters a-z, digits, . _ -)")
}

// check refuses the flags that do not go together, and a command that
// is the duration meant for a bare --wait.
func (d *detachFlags) check(cmd *cobra.Command, f sessionFlags, args []string) error {
	switch {
	case bareWaitTook(cmd, f, args):
		return newUsageError(cmd, "--wait takes its duration after an equals sign: write --wait=%s", args[0])
	case cmd.Flags().Changed("name") && strings.TrimSpace(d.name) == "":
		return newUsageError(cmd, "--name is empty; give the run a name (letters a-z, digits, . _ -) or leave --name out")
	case cmd.Flags().Changed("name") && !d.detach:
		return newUsageError(cmd, "--name names a detached run; add --detach, as in devgpu run --detach --name %s -- CMD", d.name)
	case d.detach && f.attach != "":
		return newUsageError(cmd, "--detach starts a new session for the run and --attach runs in an existing one; drop one of the two (devgpu shell --attach ID opens a shell beside a detached run)")
	}
	return nil
}

// bareWaitTook reports whether --wait was given bare (it takes no value
// after a space, so that it may come last) and the command's first word is
// a duration: `--wait 2m -- CMD` would run "2m -- CMD".
func bareWaitTook(cmd *cobra.Command, f sessionFlags, args []string) bool {
	if !cmd.Flags().Changed("wait") || len(args) == 0 || f.wait != bareWait {
		return false
	}
	_, err := time.ParseDuration(args[0])
	return err == nil
}

// runDetached starts command as a detached run and returns once the
// server has it running or queued, printing its id on stdout.
func runDetached(ctx context.Context, f sessionFlags, name, command string) error {
	client, cfg, err := newClient()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	status := newStatusLine()
	req := f.request(cfg, status, "the run")
	req.Command, req.Name = command, name
	var queued sdk.SessionEvent
	sess, err := client.CreateSession(ctx, req, func(ev sdk.SessionEvent) {
		if ev.Position > 0 {
			// Said once, below, with the id: the server answers a
			// queued run at once.
			queued = ev
			return
		}
		status.showStart(ev)
	})
	status.done()
	var cut *sdk.WaitInterrupted
	switch {
	case ctx.Err() != nil:
		return errors.New("interrupted while starting the run; the server may still start it: `devgpu sessions list` shows it, and `devgpu sessions stop ID` ends it")
	case errors.As(err, &cut):
		// The server had queued it: the queue keeps its place with no
		// client waiting.
		fmt.Println(cut.SessionID)
		fmt.Fprintf(os.Stderr, "devgpu: run %s is queued (the server's answer was cut: %v); `devgpu sessions list` shows its state\n", cut.SessionID, cut.Err)
		return nil
	case err != nil:
		return err
	}
	for _, w := range sess.Warnings {
		fmt.Fprintf(os.Stderr, "devgpu: warning: %s\n", w)
	}
	fmt.Println(sess.ID)
	fmt.Fprintln(os.Stderr, "devgpu: "+detachedNote(sess, queued))
	return nil
}

// detachedNote tells what became of a detached run just created, and how
// to follow it.
func detachedNote(s sdk.Session, queued sdk.SessionEvent) string {
	ref := s.ID
	if s.Name != "" {
		ref = s.Name
	}
	follow := fmt.Sprintf("follow it with `devgpu logs %s -f`, or `devgpu wait %s` for its exit status", ref, ref)
	switch s.State {
	case sdk.StateQueued, sdk.StateRequested:
		pos := ""
		if queued.Position > 0 {
			pos = fmt.Sprintf(" at position %d", queued.Position)
		}
		if queued.Reason != "" {
			pos += ": " + waitReason(queued.Reason)
		}
		return fmt.Sprintf("run %s queued%s; it starts by itself when it may; %s", s.ID, pos, follow)
	case sdk.StateEnded, sdk.StateFailed:
		return fmt.Sprintf("run %s has already ended; `devgpu logs %s` prints its output and `devgpu wait %s` gives its exit status", s.ID, ref, ref)
	}
	where := strings.Join(append([]string{s.GPUType}, s.GPUs...), " ")
	return fmt.Sprintf("run %s started (%s, project %s); %s", s.ID, where, s.Project, follow)
}
