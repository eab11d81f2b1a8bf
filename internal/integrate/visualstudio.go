package integrate

import (
	"fmt"
	"strings"
)

// VisualStudioSteps is what to do by hand to get devgpu shells into Visual
// Studio's integrated terminal (View > Terminal). Visual Studio 2022 keeps
// its terminal profiles in its own settings store, edited only through
// Tools > Options > Environment > Terminal; it does not read Windows
// Terminal's settings or fragments, and has no documented file to write.
func VisualStudioSteps(exe string, projects []string) string {
	var b strings.Builder
	b.WriteString("Visual Studio keeps its terminal profiles in its own settings, with no file devgpu can write.\n")
	b.WriteString("Add one profile per project in Visual Studio 2022 (17.x):\n\n")
	b.WriteString("  1. Tools > Options > Environment > Terminal.\n")
	b.WriteString("  2. For each profile below: select Add, fill in Name, Shell location and Arguments, then Apply.\n")
	b.WriteString("  3. Optionally select the profile and Set as Default.\n")
	b.WriteString("  4. Open View > Terminal and pick the profile from the terminal's drop-down.\n")
	for _, p := range projects {
		fmt.Fprintf(&b, "\n  Name:           %s\n", ProfileName(p))
		fmt.Fprintf(&b, "  Shell location: %s\n", exe)
		fmt.Fprintf(&b, "  Arguments:      %s\n", WindowsCommandLine(ShellArgs(p)...))
	}
	b.WriteString("\nThe same command line, to run anywhere:\n\n")
	for _, p := range projects {
		fmt.Fprintf(&b, "  %s\n", WindowsCommandLine(append([]string{exe}, ShellArgs(p)...)...))
	}
	return b.String()
}
