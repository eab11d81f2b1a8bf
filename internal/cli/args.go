package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// usageError is a mistake in how a command was called: a wrong number of
// arguments, an unknown command or flag. Execute prints its sentence and
// then the command's usage line.
type usageError struct {
	msg   string
	usage string // the command's usage line
	help  string // the command's path, for --help
}

func (e *usageError) Error() string { return e.msg }

func newUsageError(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), usage: cmd.UseLine(), help: cmd.CommandPath()}
}

// withUsage replaces cobra's stock argument and flag errors ("accepts 1
// arg(s), received 0") in cmd and every command below it with one
// sentence that names what the command takes, and its usage: the one
// place where every command's arguments are checked.
func withUsage(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return newUsageError(c, "%s: %s", c.CommandPath(), err)
	})
	switch {
	case cmd.HasSubCommands() && !cmd.Runnable():
		// A group such as `devgpu admin`: bare, it shows its help; with a
		// word that is none of its commands, it says so, instead of
		// cobra's help and exit status 0.
		cmd.Args = cobra.ArbitraryArgs
		cmd.RunE = func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return c.Help()
			}
			return newUsageError(c, "%s has no command %q; it has %s", c.CommandPath(), args[0], subcommands(c))
		}
	case cmd.Args != nil:
		check := cmd.Args
		cmd.Args = func(c *cobra.Command, args []string) error {
			if check(c, args) == nil {
				return nil
			}
			return newUsageError(c, "%s", argsSentence(c, args))
		}
	}
	for _, sub := range cmd.Commands() {
		withUsage(sub)
	}
}

// argsSentence says what c takes and what it was given, from its usage.
func argsSentence(c *cobra.Command, args []string) string {
	wants := strings.TrimSpace(strings.ReplaceAll(strings.TrimPrefix(c.Use, c.Name()), "[flags]", ""))
	wants = strings.TrimSpace(strings.TrimPrefix(wants, "--"))
	got := "no arguments"
	switch len(args) {
	case 0:
	case 1:
		got = fmt.Sprintf("1 argument (%q)", args[0])
	default:
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = fmt.Sprintf("%q", a)
		}
		got = fmt.Sprintf("%d arguments (%s)", len(args), strings.Join(quoted, " "))
	}
	if wants == "" {
		return fmt.Sprintf("%s takes no arguments, but was given %s", c.CommandPath(), got)
	}
	return fmt.Sprintf("%s takes %s, but was given %s", c.CommandPath(), wants, got)
}

func subcommands(c *cobra.Command) string {
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	return strings.Join(names, ", ")
}

// printUsageError writes a usage error: its sentence, then the usage.
func printUsageError(w io.Writer, err error) bool {
	var u *usageError
	if !errors.As(err, &u) {
		return false
	}
	fmt.Fprintf(w, "devgpu: %s\nusage: %s (more: %s --help)\n", oneLine(u.msg), u.usage, u.help)
	return true
}
