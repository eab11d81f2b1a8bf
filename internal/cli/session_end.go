package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// errNoExitStatus marks a shell or command whose connection to the session
// ended before it reported an exit status: the session was ended, or the
// connection (or the server) went away.
var errNoExitStatus = errors.New("the session ended before the command reported an exit status (it was stopped, or the connection was lost)")

const (
	// endWait bounds how long a shell or run whose connection dropped asks
	// the server why, while the session still reads as running (its end
	// not yet recorded) or the server does not answer (it restarts).
	endWait = 5 * time.Second
	// endPoll is the pause between those questions.
	endPoll = 100 * time.Millisecond
)

// explainEnd turns a shell's or command's end without an exit status
// into one line that says why: who or what ended the session, or, when it
// is still running (the server restarted, the network dropped), how to
// reattach. Other results pass through.
func explainEnd(ctx context.Context, api *sdk.Client, id string, err error) error {
	if !errors.Is(err, errNoExitStatus) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), endWait)
	defer cancel()
	var (
		last  sdk.Session
		known bool
	)
	for {
		s, gerr := api.Session(ctx, id)
		if gerr == nil {
			last, known = s, true
			if !s.Active() || (s.State == sdk.StateStopping && s.EndReason != "") {
				return errors.New(endMessage(s))
			}
		}
		select {
		case <-ctx.Done():
			if known && last.State == sdk.StateRunning {
				return fmt.Errorf("lost the connection to session %s, which is still running; reattach within the project's detach grace with `devgpu shell --attach %s`", id, id)
			}
			if known {
				return fmt.Errorf("lost the connection to session %s, which is %s; see `devgpu sessions list --all` for how it ends", id, last.State)
			}
			return fmt.Errorf("lost the connection to session %s and the server does not answer; once it does, reattach within the project's detach grace with `devgpu shell --attach %s`", id, id)
		case <-time.After(endPoll):
		}
	}
}

// endMessage says why a session ended, in one line.
func endMessage(s sdk.Session) string {
	if s.State == sdk.StateFailed {
		return fmt.Sprintf("session %s failed: %s", s.ID, endCause(s))
	}
	return fmt.Sprintf("session %s ended: %s", s.ID, endCause(s))
}

// endCause is endMessage without the session: what ended it.
func endCause(s sdk.Session) string {
	if s.State == sdk.StateFailed {
		if s.Error != "" {
			return oneLine(s.Error)
		}
		return orDefault(s.EndReason, "no reason recorded")
	}
	by := func(who string) string {
		if s.EndedBy == "" || s.EndedBy == "system" {
			return who
		}
		return who + " " + s.EndedBy
	}
	var why string
	switch s.EndReason {
	case sdk.ReasonStopped:
		why = by("stopped by its owner") + " with `devgpu sessions stop`"
	case sdk.ReasonAdmin:
		why = by("stopped by administrator")
	case sdk.ReasonIdle:
		why = "idle (no input, output or GPU use) for the project's idle timeout"
	case sdk.ReasonLifetime:
		why = "it reached the project's maximum lifetime"
	case sdk.ReasonBudget:
		why = fmt.Sprintf("project %s spent its monthly budget, whose action is to stop sessions; ask a project admin to raise it", s.Project)
	case sdk.ReasonRevoked:
		why = fmt.Sprintf("your access to project %s was removed", s.Project)
	case sdk.ReasonLost:
		why = "its processes disappeared (lost)"
	case sdk.ReasonDetached:
		why = "its client was away longer than the project's detach grace"
	case sdk.ReasonClosed:
		why = "its last shell closed"
	case sdk.ReasonCompleted:
		why = "its command exited"
	case "":
		why = "no reason recorded"
	default:
		why = s.EndReason
	}
	return why
}
