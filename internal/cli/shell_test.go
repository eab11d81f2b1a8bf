package cli

import (
	"os/exec"
	"testing"
)

// The quoted line, run by a real shell, gives the command its arguments
// exactly as they were given.
func TestCommandLine(t *testing.T) {
	t.Parallel()
	args := []string{"printf", "[%s]", "a b", "it's", "$HOME", "", `back\slash`, "*"}
	out, err := exec.Command("sh", "-c", commandLine(args)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := `[a b][it's][$HOME][][back\slash][*]`; string(out) != want {
		t.Fatalf("got %s, want %s", out, want)
	}
	if got := commandLine([]string{"echo $HOME"}); got != "echo $HOME" {
		t.Fatalf("one argument is a command line as it is, got %q", got)
	}
}
