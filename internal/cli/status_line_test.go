package cli

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestFitWidth(t *testing.T) {
	t.Parallel()
	line := "⠋ queued, position 1: project default uses 1 of its 1 GPUs…"
	for _, width := range []int{1, 2, 10, 20, 40, 59, 60, 61, 200} {
		got := fitWidth(line, width)
		if n := utf8.RuneCountInString(got); n >= width && got != "" {
			t.Errorf("fitWidth(width %d) = %q, %d columns", width, got, n)
		}
		if width > len([]rune(line)) && got != line {
			t.Errorf("fitWidth(width %d) shortened a line that fits: %q", width, got)
		}
	}
}

func TestWaitReasonDropsAdvice(t *testing.T) {
	t.Parallel()
	for _, r := range []string{
		"project ml uses 8 of its 8 GPUs; wait with --wait, or ask a project admin to raise max_gpus",
		"all 4 t4 GPUs are in use; try again when a session ends, or wait with --wait",
		"you use 1 of your 1 GPUs in project ml; end a session (devgpu sessions list) or wait with --wait",
	} {
		if got := waitReason(r); strings.Contains(got, "--wait") || !strings.Contains(got, "GPUs") {
			t.Errorf("waitReason(%q) = %q", r, got)
		}
	}
}
