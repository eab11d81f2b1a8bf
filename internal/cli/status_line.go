package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// waitReason is the cause a queued request waits for, without the advice
// that follows it in admission's messages ("CAUSE; FIX"): the advice is
// for a refused request (such as "wait with --wait"), not a waiting one.
func waitReason(reason string) string {
	cause, _, _ := strings.Cut(reason, "; ")
	return cause
}

// stderrWidth is the width of the terminal on stderr, 80 if unknown.
func stderrWidth() int {
	w, _, err := term.GetSize(int(os.Stderr.Fd()))
	if err != nil || w <= 0 {
		return 80
	}
	return w
}

// fitWidth shortens s to fewer columns than width (so that a terminal
// never wraps it), ending a shortened line with "…". It counts a rune as a
// column, which holds for the spinner and the messages devgpu writes.
func fitWidth(s string, width int) string {
	limit := width - 1
	r := []rune(s)
	if len(r) <= limit {
		return s
	}
	if limit < 1 {
		return ""
	}
	return string(r[:limit-1]) + "…"
}

// serverAway tells the user on stderr while the server does not answer,
// so that a command waiting on it is not silently stuck: a line when it
// stops answering (on a terminal, redrawn with the seconds since it last
// did) and, when back is set, a line when it answers again.
type serverAway struct {
	msg, back string
	status    *statusLine // while the server does not answer
}

// lost says that the server has not answered since then; ownLine starts
// the line below output that ended mid-line. Said once until answered.
func (a *serverAway) lost(since time.Time, ownLine bool) {
	if a.status != nil {
		return
	}
	a.status = newStatusLine()
	a.status.ownLine, a.status.since, a.status.announce = ownLine, since, true
	a.status.set(a.msg)
}

// answered says that the server answers again, when it had not.
func (a *serverAway) answered() {
	if a.status == nil {
		return
	}
	a.quiet()
	if a.back != "" {
		fmt.Fprintf(os.Stderr, "devgpu: %s\n", a.back)
	}
}

// quiet takes the line away, saying nothing more: the command ends.
func (a *serverAway) quiet() {
	if a.status != nil {
		a.status.done()
		a.status = nil
	}
}
