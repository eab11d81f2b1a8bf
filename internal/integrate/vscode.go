package integrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/tailscale/hujson"
)

// VSCodeProfile is a VS Code terminal profile.
type VSCodeProfile struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
	Icon string   `json:"icon,omitempty"`
}

// VSCodeOS is the suffix VS Code uses for goos in
// terminal.integrated.profiles.<os>.
func VSCodeOS(goos string) string {
	switch goos {
	case "darwin":
		return "osx"
	case "windows":
		return "windows"
	default:
		return "linux"
	}
}

// VSCodeProfilesKey is the settings.json key holding terminal profiles on
// goos.
func VSCodeProfilesKey(goos string) string {
	return "terminal.integrated.profiles." + VSCodeOS(goos)
}

// VSCodeSettingsPath is the user's VS Code settings.json on goos: getenv
// reads the environment and home is the home directory. The variable
// DEVGPU_VSCODE_SETTINGS, when set, is the path.
func VSCodeSettingsPath(goos string, getenv func(string) string, home string) (string, error) {
	if p := getenv("DEVGPU_VSCODE_SETTINGS"); p != "" {
		return p, nil
	}
	switch goos {
	case "windows":
		appData := getenv("APPDATA")
		if appData == "" {
			return "", errors.New("%APPDATA% is not set; set DEVGPU_VSCODE_SETTINGS to VS Code's settings.json")
		}
		return appData + `\Code\User\settings.json`, nil
	case "darwin":
		return filepath.Join(home, "Library", "Application Support", "Code", "User", "settings.json"), nil
	default:
		dir := getenv("XDG_CONFIG_HOME")
		if dir == "" {
			dir = filepath.Join(home, ".config")
		}
		return filepath.Join(dir, "Code", "User", "settings.json"), nil
	}
}

// VSCodeProfiles returns the profiles for projects, keyed by profile name.
func VSCodeProfiles(exe string, projects []string) map[string]VSCodeProfile {
	m := make(map[string]VSCodeProfile, len(projects))
	for _, p := range projects {
		m[ProfileName(p)] = VSCodeProfile{Path: exe, Args: ShellArgs(p), Icon: "vm"}
	}
	return m
}

// VSCodeSnippet is the settings.json fragment to add by hand: an object
// with the profiles key for goos.
func VSCodeSnippet(goos, exe string, projects []string) []byte {
	return marshalIndent(map[string]any{VSCodeProfilesKey(goos): VSCodeProfiles(exe, projects)}, "", "    ")
}

// ErrUnsafeEdit is wrapped by the errors of MergeVSCodeSettings that mean
// the file cannot be edited without risking the user's content.
var ErrUnsafeEdit = errors.New("cannot edit settings.json safely")

// MergeVSCodeSettings returns src, the contents of a VS Code settings.json
// (JSON with comments and trailing commas; empty for a new file), with a
// terminal profile for each project under the profiles key for goos. It
// edits only the bytes it must: comments, order, indentation and line
// endings stay as they were, and a profile already as wanted is left
// untouched, so merging twice gives the same bytes. It refuses, with an
// error wrapping ErrUnsafeEdit, a file it cannot edit that way.
func MergeVSCodeSettings(src []byte, goos, exe string, projects []string) ([]byte, error) {
	bom := []byte("\xef\xbb\xbf")
	hasBOM := bytes.HasPrefix(src, bom)
	out := bytes.Clone(bytes.TrimPrefix(src, bom))
	if len(bytes.TrimSpace(out)) == 0 {
		out = []byte("{}\n")
	}
	want, err := standardMap(out)
	if err != nil {
		return nil, err
	}
	key := VSCodeProfilesKey(goos)
	profiles := VSCodeProfiles(exe, projects)
	for _, p := range projects {
		name := ProfileName(p)
		if out, err = setMember(out, key, name, profiles[name]); err != nil {
			return nil, err
		}
		m, _ := want[key].(map[string]any)
		if m == nil {
			m = map[string]any{}
			want[key] = m
		}
		m[name] = roundTrip(profiles[name])
	}
	// Check the result means exactly the input plus our profiles.
	got, err := standardMap(out)
	if err != nil {
		return nil, fmt.Errorf("%w: the edit did not parse back (%v)", ErrUnsafeEdit, err)
	}
	if !reflect.DeepEqual(got, want) {
		return nil, fmt.Errorf("%w: the edit changed more than the devgpu profiles", ErrUnsafeEdit)
	}
	if hasBOM {
		out = append(bom[:len(bom):len(bom)], out...)
	}
	return out, nil
}

// standardMap parses JSONC into a map, or says why it cannot be edited.
func standardMap(b []byte) (map[string]any, error) {
	v, err := hujson.Parse(bytes.Clone(b)) // Standardize rewrites in place

	if err != nil {
		return nil, fmt.Errorf("%w: it is not valid JSON with comments (%v)", ErrUnsafeEdit, err)
	}
	if _, ok := v.Value.(*hujson.Object); !ok {
		return nil, fmt.Errorf("%w: its top level is not a JSON object", ErrUnsafeEdit)
	}
	v.Standardize()
	var m map[string]any
	if err := json.Unmarshal(v.Pack(), &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsafeEdit, err)
	}
	return m, nil
}

func roundTrip(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// setMember sets src[key][name] = value, creating the key's object when
// absent, by splicing text into src.
func setMember(src []byte, key, name string, value any) ([]byte, error) {
	root, err := hujson.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("%w: it is not valid JSON with comments (%v)", ErrUnsafeEdit, err)
	}
	e := editor{src: src, nl: "\n"}
	if bytes.Contains(src, []byte("\r\n")) {
		e.nl = "\r\n"
	}
	e.unit = e.indentUnit(&root)
	obj := root.Value.(*hujson.Object)
	i, err := findMember(obj, key)
	if err != nil {
		return nil, err
	}
	if i < 0 {
		return e.insert(&root, key, map[string]any{name: value}), nil
	}
	parent := &obj.Members[i].Value
	inner, ok := parent.Value.(*hujson.Object)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not an object", ErrUnsafeEdit, key)
	}
	j, err := findMember(inner, name)
	if err != nil {
		return nil, err
	}
	if j < 0 {
		return e.insert(parent, name, value), nil
	}
	old := &inner.Members[j].Value
	var have any
	c := old.Clone()
	c.Standardize()
	_ = json.Unmarshal(c.Pack(), &have)
	if reflect.DeepEqual(have, roundTrip(value)) {
		return src, nil // already as wanted: leave its layout alone
	}
	return e.replace(old, value), nil
}

// findMember is the index of the member named name in obj, -1 if none.
// A name given twice is ambiguous to edit.
func findMember(obj *hujson.Object, name string) (int, error) {
	found := -1
	for i, m := range obj.Members {
		lit, ok := m.Name.Value.(hujson.Literal)
		if !ok || lit.String() != name {
			continue
		}
		if found >= 0 {
			return -1, fmt.Errorf("%w: %q appears twice", ErrUnsafeEdit, name)
		}
		found = i
	}
	return found, nil
}

type editor struct {
	src  []byte
	nl   string // the file's line ending
	unit string // one level of indentation
}

// lineIndent is the whitespace that starts the line holding offset.
func (e editor) lineIndent(offset int) string {
	start := bytes.LastIndexByte(e.src[:offset], '\n') + 1
	line := e.src[start:offset]
	n := len(line) - len(bytes.TrimLeft(line, " \t"))
	return string(line[:n])
}

// ownLine reports whether offset is the first non-blank byte of its line.
func (e editor) ownLine(offset int) bool {
	start := bytes.LastIndexByte(e.src[:offset], '\n') + 1
	return len(bytes.TrimLeft(e.src[start:offset], " \t")) == 0
}

// indentUnit guesses one level of indentation from the first member of the
// root object on a line of its own; VS Code's default is four spaces.
func (e editor) indentUnit(root *hujson.Value) string {
	obj := root.Value.(*hujson.Object)
	for _, m := range obj.Members {
		if e.ownLine(m.Name.StartOffset) {
			if ind := e.lineIndent(m.Name.StartOffset); ind != "" {
				return ind
			}
		}
	}
	return "    "
}

// render formats v as JSON whose continuation lines start with indent.
func (e editor) render(v any, indent string) string {
	s := strings.TrimSuffix(string(marshalIndent(v, indent, e.unit)), "\n")
	return strings.ReplaceAll(s, "\n", e.nl)
}

// replace swaps the value old for value.
func (e editor) replace(old *hujson.Value, value any) []byte {
	indent := e.lineIndent(old.StartOffset)
	var out []byte
	out = append(out, e.src[:old.StartOffset]...)
	out = append(out, e.render(value, indent)...)
	return append(out, e.src[old.EndOffset:]...)
}

// insert adds the member name: value at the end of the object v.
func (e editor) insert(v *hujson.Value, name string, value any) []byte {
	obj := v.Value.(*hujson.Object)
	outer := e.lineIndent(v.StartOffset)
	indent := outer + e.unit
	if n := len(obj.Members); n > 0 && e.ownLine(obj.Members[n-1].Name.StartOffset) {
		indent = e.lineIndent(obj.Members[n-1].Name.StartOffset)
	}
	closing := v.EndOffset - 1 // the closing brace
	// Insert after whatever precedes the brace other than whitespace: the
	// last member, its comma or a comment.
	at := v.StartOffset + 1 + len(bytes.TrimRight(e.src[v.StartOffset+1:closing], " \t\r\n"))
	nameJSON, _ := json.Marshal(name)
	member := e.nl + indent + string(nameJSON) + ": " + e.render(value, indent)
	if !bytes.Contains(e.src[at:closing], []byte("\n")) {
		member += e.nl + outer
	}
	var out []byte
	if n := len(obj.Members); n > 0 && obj.Members[n-1].Value.AfterExtra == nil {
		// No trailing comma: add one right after the last value.
		end := obj.Members[n-1].Value.EndOffset
		out = append(out, e.src[:end]...)
		out = append(out, ',')
		out = append(out, e.src[end:at]...)
	} else {
		out = append(out, e.src[:at]...)
	}
	out = append(out, member...)
	return append(out, e.src[at:]...)
}
