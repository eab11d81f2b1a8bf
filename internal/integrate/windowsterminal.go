package integrate

import (
	"bytes"
	"encoding/json"
	"unicode/utf16"

	"github.com/google/uuid"
)

// FragmentApp is the folder under Windows Terminal's Fragments directory
// that holds devgpu's fragment; Terminal derives the profiles' GUIDs from it.
const FragmentApp = "devgpu"

// FragmentFile is the fragment's file name inside its folder.
const FragmentFile = "devgpu.json"

// IconFile is the icon's file name, next to the fragment.
const IconFile = "devgpu.png"

// TerminalFragmentNamespace is the namespace under which Windows Terminal
// derives the GUIDs of profiles that fragments add
// (RUNTIME_GENERATED_PROFILE_NAMESPACE_GUID in Terminal's source).
var TerminalFragmentNamespace = uuid.MustParse("f65ddb7e-706b-4499-8a50-40313caf510a")

// utf16LE encodes s as UTF-16, little-endian, without a byte order mark:
// the bytes Terminal hashes.
func utf16LE(s string) []byte {
	units := utf16.Encode([]rune(s))
	b := make([]byte, 0, 2*len(units))
	for _, u := range units {
		b = append(b, byte(u), byte(u>>8))
	}
	return b
}

// FragmentProfileGUID is the GUID Windows Terminal gives a profile named
// name in the fragment folder app: UUIDv5(UUIDv5(TerminalFragmentNamespace,
// UTF-16LE(app)), UTF-16LE(name)). Writing the same GUID into the fragment
// keeps the user's customisations of a profile attached to it.
func FragmentProfileGUID(app, name string) uuid.UUID {
	ns := uuid.NewSHA1(TerminalFragmentNamespace, utf16LE(app))
	return uuid.NewSHA1(ns, utf16LE(name))
}

// TerminalProfile is one profile in a Windows Terminal fragment.
type TerminalProfile struct {
	GUID              string `json:"guid"`
	Name              string `json:"name"`
	Commandline       string `json:"commandline"`
	Icon              string `json:"icon,omitempty"`
	StartingDirectory string `json:"startingDirectory,omitempty"`
	TabTitle          string `json:"tabTitle,omitempty"`
}

// TerminalFragment is a Windows Terminal JSON fragment extension.
type TerminalFragment struct {
	Profiles []TerminalProfile `json:"profiles"`
}

// WindowsTerminalFragment renders the fragment with one profile per
// project, each running exe (the devgpu executable's absolute Windows
// path) with `shell --project P`. iconPath is the icon's absolute path
// (empty for none). The output is indented JSON ending in a newline, the
// same bytes for the same input.
func WindowsTerminalFragment(exe, iconPath string, projects []string) []byte {
	f := TerminalFragment{Profiles: []TerminalProfile{}}
	for _, p := range projects {
		name := ProfileName(p)
		f.Profiles = append(f.Profiles, TerminalProfile{
			GUID:              "{" + FragmentProfileGUID(FragmentApp, name).String() + "}",
			Name:              name,
			Commandline:       WindowsCommandLine(append([]string{exe}, ShellArgs(p)...)...),
			Icon:              iconPath,
			StartingDirectory: "%USERPROFILE%",
			TabTitle:          name,
		})
	}
	return marshalIndent(f, "", "  ")
}

// marshalIndent is json.MarshalIndent without HTML escaping, ending in a
// newline.
func marshalIndent(v any, prefix, indent string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent(prefix, indent)
	if err := enc.Encode(v); err != nil {
		panic(err) // only our own plain types are encoded
	}
	return buf.Bytes()
}
