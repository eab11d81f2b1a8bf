package cli

import (
	"os/exec"
	"testing"

	"github.com/spf13/cobra"
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

// A bare --wait takes no value after a space: a duration there would be
// run as the command, so run refuses it and says how to write it.
func TestBareWaitTook(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		refused bool
	}{
		{[]string{"--detach", "--wait", "2m", "--name", "c", "--", "echo hi"}, true},
		{[]string{"--wait", "1h30m", "nvidia-smi"}, true},
		{[]string{"--wait=2m", "--", "echo hi"}, false},
		{[]string{"--wait", "--", "nvidia-smi"}, false},
		{[]string{"--wait", "nvidia-smi"}, false},
		{[]string{"--", "5m"}, false},
	} {
		var f sessionFlags
		var d detachFlags
		cmd := &cobra.Command{Use: "run"}
		cmd.Flags().SetInterspersed(false)
		f.register(cmd)
		d.register(cmd)
		if err := cmd.ParseFlags(tc.args); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		err := d.check(cmd, f, cmd.Flags().Args())
		want := "--wait takes its duration after an equals sign: write --wait=" + tc.args[len(tc.args)-len(cmd.Flags().Args())]
		switch {
		case tc.refused && (err == nil || err.Error() != want):
			t.Errorf("%q: %v; want %q", tc.args, err, want)
		case !tc.refused && err != nil:
			t.Errorf("%q: %v; want it taken", tc.args, err)
		}
	}
}
