package cli

import (
	"os"
	"strings"

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
