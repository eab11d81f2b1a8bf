// Package names checks, in one place, the names and free text that users
// give the control plane: user, project and token names, and descriptions.
// Names have a length limit and a small charset; free text has a length
// limit and no control characters, so that nothing stored can rewrite the
// terminal of whoever lists it later.
package names

import (
	"fmt"
	"regexp"
	"unicode"
	"unicode/utf8"
)

// Limits, in bytes for names and in characters for free text.
const (
	MaxName  = 64
	MaxLabel = 64
	MaxText  = 1024
)

var (
	userRE    = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,63}$`)
	projectRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// User checks a user name: 1 to 64 lower-case letters, digits, '_', '.'
// and '-', starting with a letter or '_' (as unix user names do).
func User(name string) error {
	if !userRE.MatchString(name) {
		return fmt.Errorf("user name %s is invalid; use 1 to %d lower-case letters, digits, '_', '.' and '-', starting with a letter", Quote(name), MaxName)
	}
	return nil
}

// Project checks a project name: 1 to 63 lower-case letters, digits and
// dashes, starting with a letter or digit (a DNS label).
func Project(name string) error {
	if !projectRE.MatchString(name) {
		return fmt.Errorf("project name %s is invalid; use 1 to 63 lower-case letters, digits and dashes, starting with a letter or digit", Quote(name))
	}
	return nil
}

// Label checks a short free-form name such as a token's: at most 64
// characters, printable, no control characters, and not starting or
// ending with a space. Empty is allowed.
func Label(field, s string) error {
	if err := Text(field, s, MaxLabel); err != nil {
		return err
	}
	if s != "" && (s[0] == ' ' || s[len(s)-1] == ' ') {
		return fmt.Errorf("%s %s starts or ends with a space; remove it", field, Quote(s))
	}
	return nil
}

// Text checks free text such as a description: valid UTF-8, at most max
// characters, and no control characters (no newlines, tabs or escape
// sequences) nor other invisible formatting characters.
func Text(field, s string, max int) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8; send it as UTF-8 text", field)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return fmt.Errorf("%s is %d characters long; shorten it to at most %d", field, n, max)
	}
	for _, r := range s {
		if !printable(r) {
			return fmt.Errorf("%s %s contains the control character %U; use printable characters only", field, Quote(s), r)
		}
	}
	return nil
}

// printable reports whether r may appear in stored text: letters, marks,
// numbers, punctuation, symbols and the plain space; not control,
// format (bidi overrides, zero-width), private-use or unassigned runes.
func printable(r rune) bool {
	return r == ' ' || (unicode.IsGraphic(r) && !unicode.Is(unicode.Zs, r))
}

// Quote renders s for a message or a terminal: printable characters as
// they are, every other one escaped (\x1b, \n, \u202e), in double quotes.
func Quote(s string) string { return `"` + Escape(s) + `"` }

// Escape returns s with every character that is not printable escaped as
// Go would write it in a string literal (\x1b, \t, \u202e), and
// backslashes doubled, so that text from the server cannot move the
// cursor, clear the screen or change the title of a terminal that shows
// it. Invalid UTF-8 bytes show as \xNN.
func Escape(s string) string {
	safe := true
	for _, r := range s {
		if r == '\\' || r == utf8.RuneError || !printable(r) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	var b []byte
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			b = fmt.Appendf(b, `\x%02x`, s[i])
		case r == '\\':
			b = append(b, `\\`...)
		case r == '\t':
			b = append(b, `\t`...)
		case r == '\n':
			b = append(b, `\n`...)
		case r == '\r':
			b = append(b, `\r`...)
		case printable(r):
			b = append(b, s[i:i+size]...)
		case r < 0x80:
			b = fmt.Appendf(b, `\x%02x`, r)
		case r < 0x10000:
			b = fmt.Appendf(b, `\u%04x`, r)
		default:
			b = fmt.Appendf(b, `\U%08x`, r)
		}
		i += size
	}
	return string(b)
}
