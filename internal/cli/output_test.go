package cli

import (
	"bytes"
	"strings"
	"testing"
)

// A name holding terminal escapes prints escaped in every table, and its
// tabs or newlines cannot shift the columns.
func TestRowEscapes(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	row(&b, "\x1b[2J\x1b]0;pwned\x07", 42, "a\tb\nc")
	got := b.String()
	if want := `\x1b[2J\x1b]0;pwned\x07` + "\t42\t" + `a\tb\nc` + "\n"; got != want {
		t.Fatalf("row = %q, want %q", got, want)
	}
	if strings.ContainsAny(got, "\x1b\x07") {
		t.Fatalf("row kept a control character: %q", got)
	}
}
