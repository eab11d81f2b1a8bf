// Package integrate renders the files and instructions that put devgpu
// shells where developers already work: Windows Terminal profiles (a JSON
// fragment extension), VS Code terminal profiles (an edit of the user's
// settings.json that keeps its comments and layout) and Visual Studio's
// terminal (step-by-step instructions, as it offers no file to write).
//
// Everything here is pure: callers pass the devgpu executable, the projects
// and the file contents, and get bytes or text back. Finding paths, asking
// the API and writing files belong to the CLI.
package integrate

import (
	_ "embed"
	"strings"
)

// Icon is devgpu's 32×32 PNG icon, written next to the Windows Terminal
// fragment.
//
//go:embed devgpu.png
var Icon []byte

// ProfileName is the name of the terminal profile for a project, the same
// in every integration.
func ProfileName(project string) string {
	return "devgpu (" + project + ")"
}

// ShellArgs are the arguments, after the executable, that each profile runs.
func ShellArgs(project string) []string {
	return []string{"shell", "--project", project}
}

// WindowsCommandLine quotes args into one command line the way the
// Microsoft C runtime splits it back (CommandLineToArgvW), as
// syscall.EscapeArg does on Windows.
func WindowsCommandLine(args ...string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = windowsQuote(a)
	}
	return strings.Join(quoted, " ")
}

func windowsQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n\v\"") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	slashes := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			slashes++
		case '"':
			// Backslashes before a quote are doubled, and the quote escaped.
			b.WriteString(strings.Repeat(`\`, 2*slashes+1))
			b.WriteByte('"')
			slashes = 0
		default:
			b.WriteString(strings.Repeat(`\`, slashes))
			b.WriteByte(c)
			slashes = 0
		}
	}
	// Backslashes before the closing quote are doubled.
	b.WriteString(strings.Repeat(`\`, 2*slashes))
	b.WriteByte('"')
	return b.String()
}
