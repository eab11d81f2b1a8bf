package names

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNames(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		check func(string) error
		name  string
		ok    bool
	}{
		{Project, "ml-research", true},
		{Project, "a", true},
		{Project, strings.Repeat("a", 63), true},
		{Project, strings.Repeat("a", 64), false},
		{Project, "\x1b[2J", false},
		{Project, "ml\nresearch", false},
		{Project, "", false},
		{Project, "-ml", false},
		{Project, "ML", false},
		{User, "alice", true},
		{User, "_svc.ci-1", true},
		{User, strings.Repeat("a", 64), true},
		{User, strings.Repeat("a", 65), false},
		{User, "al\x07ice", false},
		{User, "1alice", false},
		{func(s string) error { return Label("token name", s) }, "laptop (work)", true},
		{func(s string) error { return Label("token name", s) }, "", true},
		{func(s string) error { return Label("token name", s) }, "ordinateur portable é", true},
		{func(s string) error { return Label("token name", s) }, strings.Repeat("é", 64), true},
		{func(s string) error { return Label("token name", s) }, strings.Repeat("é", 65), false},
		{func(s string) error { return Label("token name", s) }, "\x1b]0;pwned\x07", false},
		{func(s string) error { return Label("token name", s) }, "tab\there", false},
		{func(s string) error { return Label("token name", s) }, "rtl\u202eexe.txt", false},
		{func(s string) error { return Label("token name", s) }, "zero\u200bwidth", false},
		{func(s string) error { return Label("token name", s) }, " padded", false},
		{func(s string) error { return Label("token name", s) }, "bad\xffutf8", false},
		{func(s string) error { return Text("description", s, 10) }, "0123456789", true},
		{func(s string) error { return Text("description", s, 10) }, "0123456789x", false},
	} {
		err := tt.check(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("%q: %v, want ok=%t", tt.name, err, tt.ok)
		}
		if err != nil && (strings.ContainsAny(err.Error(), "\x1b\x07\n\t") || !strings.Contains(err.Error(), "; ")) {
			t.Errorf("%q: message %q is not one clean sentence naming the fix", tt.name, err)
		}
	}
}

func TestEscape(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain text":        "plain text",
		"\x1b[2J":           `\x1b[2J`,
		"a\tb\nc\rd":        `a\tb\nc\rd`,
		"back\\slash":       `back\\slash`,
		"bell\x07":          `bell\x07`,
		"del\x7f":           `del\x7f`,
		"c1\u009b2J":        `c1\u009b2J`,
		"rtl\u202e":         `rtl\u202e`,
		"bad\xff":           `bad\xff`,
		"café ✓":            "café ✓",
		"nbsp\u00a0":        `nbsp\u00a0`,
		"private\U000f0000": `private\U000f0000`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzText checks the validator and the escaper against each other: what
// Text accepts is shown as it is, and whatever the input, the escaped form
// holds no control character, so it cannot act on a terminal.
func FuzzText(f *testing.F) {
	for _, s := range []string{"ml-research", "\x1b[2J", "laptop (work)", "rtl\u202e", "bad\xff", "a\\b", "\u009b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		esc := Escape(s)
		for _, r := range esc {
			if !printable(r) {
				t.Fatalf("Escape(%q) = %q keeps %U", s, esc, r)
			}
		}
		if Text("text", s, MaxText) == nil && !strings.Contains(s, `\`) && esc != s {
			t.Fatalf("Text accepts %q but Escape changes it to %q", s, esc)
		}
		if Text("text", s, MaxText) == nil && !utf8.ValidString(s) {
			t.Fatalf("Text accepts invalid UTF-8 %q", s)
		}
		if Project(s) == nil || User(s) == nil {
			if err := Label("name", s); err != nil {
				t.Fatalf("a valid user or project name %q is not a valid label: %v", s, err)
			}
		}
	})
}
