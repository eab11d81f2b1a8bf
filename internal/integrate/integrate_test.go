package integrate

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/tailscale/hujson"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test -update if the change is intended)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var projects = []string{"default", "ml-research"}

const (
	winExe  = `C:\Program Files\devgpu\devgpu.exe`
	winIcon = `C:\Users\ada\AppData\Local\Microsoft\Windows Terminal\Fragments\devgpu\devgpu.png`
)

// Terminal's documented example: Git for Windows' fragment folder "Git"
// gives its "Git Bash" profile this GUID.
func TestFragmentProfileGUIDDocumentedExample(t *testing.T) {
	t.Parallel()
	want := uuid.MustParse("2ece5bfe-50ed-5f3a-ab87-5cd4baafed2b")
	if got := FragmentProfileGUID("Git", "Git Bash"); got != want {
		t.Fatalf("FragmentProfileGUID(Git, Git Bash) = %s, want %s", got, want)
	}
}

// The rule spelled out independently: SHA-1 over the namespace's bytes and
// the name's UTF-16LE bytes, version 5, RFC 4122 variant.
func TestFragmentProfileGUIDRule(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"devgpu (default)", "devgpu (ml-research)", "devgpu (données-π)"} {
		ns := uuid.NewSHA1(TerminalFragmentNamespace, []byte("d\x00e\x00v\x00g\x00p\x00u\x00"))
		var le []byte
		for _, r := range name { // all in the BMP
			le = append(le, byte(r), byte(r>>8))
		}
		want := uuid.NewSHA1(ns, le)
		got := FragmentProfileGUID(FragmentApp, name)
		if got != want {
			t.Errorf("%q: got %s, want %s", name, got, want)
		}
		if got.Version() != 5 || got.Variant() != uuid.RFC4122 {
			t.Errorf("%q: %s is not a version 5 RFC 4122 UUID", name, got)
		}
	}
}

func TestWindowsTerminalFragment(t *testing.T) {
	t.Parallel()
	got := WindowsTerminalFragment(winExe, winIcon, projects)
	golden(t, "windows-terminal.golden", got)
	// Every GUID in the fragment follows Terminal's rule for its name.
	for _, p := range projects {
		guid := "{" + FragmentProfileGUID(FragmentApp, ProfileName(p)).String() + "}"
		if !bytes.Contains(got, []byte(`"guid": "`+guid+`"`)) {
			t.Errorf("fragment lacks the GUID %s for %s", guid, ProfileName(p))
		}
	}
	if again := WindowsTerminalFragment(winExe, winIcon, projects); !bytes.Equal(got, again) {
		t.Error("the fragment is not the same twice")
	}
}

func TestIconIsPNG(t *testing.T) {
	t.Parallel()
	if !bytes.HasPrefix(Icon, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatal("the embedded icon is not a PNG")
	}
}

func TestWindowsCommandLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{`C:\devgpu.exe`, "shell"}, `C:\devgpu.exe shell`},
		{[]string{`C:\Program Files\devgpu.exe`}, `"C:\Program Files\devgpu.exe"`},
		{[]string{""}, `""`},
		{[]string{`a"b`}, `"a\"b"`},
		{[]string{`dir with\`}, `"dir with\\"`},
		{[]string{`a\\"b c`}, `"a\\\\\"b c"`},
	} {
		if got := WindowsCommandLine(tc.args...); got != tc.want {
			t.Errorf("WindowsCommandLine(%q) = %s, want %s", tc.args, got, tc.want)
		}
	}
}

func TestMergeVSCodeSettingsGolden(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, goos string }{
		{"comments", "linux"},
		{"comments", "darwin"},
		{"empty", "windows"},
		{"tabs", "linux"},
		{"crlf", "linux"},
		{"stale", "linux"},
	} {
		t.Run(tc.in+"-"+tc.goos, func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(filepath.Join("testdata", "vscode", tc.in+".jsonc"))
			if err != nil {
				t.Fatal(err)
			}
			exe := "/usr/local/bin/devgpu"
			if tc.goos == "windows" {
				exe = winExe
			}
			orig := bytes.Clone(src)
			got, err := MergeVSCodeSettings(src, tc.goos, exe, projects)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("vscode", tc.in+"-"+tc.goos+".golden"), got)
			if _, err := hujson.Parse(got); err != nil {
				t.Fatalf("the result is not JSONC: %v", err)
			}
			// Every comment of the input is still there.
			if !bytes.Equal(src, orig) {
				t.Fatal("MergeVSCodeSettings changed its input")
			}
			cs := comments(t, src)
			if tc.in == "comments" && len(cs) != 6 {
				t.Fatalf("found %d comments in the input, want 6: %q", len(cs), cs)
			}
			for _, c := range cs {
				if !bytes.Contains(got, c) {
					t.Errorf("comment %q was lost", c)
				}
			}
			again, err := MergeVSCodeSettings(got, tc.goos, exe, projects)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, got) {
				t.Errorf("merging twice changed the file:\n%s", again)
			}
		})
	}
}

// comments returns the comments in JSONC src.
func comments(t *testing.T, src []byte) [][]byte {
	v, err := hujson.Parse(src)
	if err != nil {
		if len(bytes.TrimSpace(src)) == 0 {
			return nil
		}
		t.Fatal(err)
	}
	var out [][]byte
	add := func(e hujson.Extra) {
		s := string(e)
		for {
			i := strings.Index(s, "/")
			if i < 0 {
				return
			}
			s = s[i:]
			end := len(s)
			switch {
			case strings.HasPrefix(s, "//"):
				if j := strings.IndexByte(s, '\n'); j >= 0 {
					end = j
				}
			case strings.HasPrefix(s, "/*"):
				end = strings.Index(s, "*/") + 2
			}
			out = append(out, []byte(strings.TrimRight(s[:end], "\r")))
			s = s[end:]
		}
	}
	for x := range v.All() {
		add(x.BeforeExtra)
		add(x.AfterExtra)
		if o, ok := x.Value.(*hujson.Object); ok {
			add(o.AfterExtra)
		}
	}
	return out
}

func TestMergeVSCodeSettingsUnsafe(t *testing.T) {
	t.Parallel()
	for name, src := range map[string]string{
		"not JSON":          `{"a": `,
		"array at the top":  `[1, 2]`,
		"profiles not obj":  `{"terminal.integrated.profiles.linux": null}`,
		"duplicate key":     `{"terminal.integrated.profiles.linux": {}, "terminal.integrated.profiles.linux": {}}`,
		"duplicate profile": `{"terminal.integrated.profiles.linux": {"devgpu (default)": 1, "devgpu (default)": 2}}`,
	} {
		_, err := MergeVSCodeSettings([]byte(src), "linux", "/bin/devgpu", projects)
		if !errors.Is(err, ErrUnsafeEdit) {
			t.Errorf("%s: got %v, want an ErrUnsafeEdit", name, err)
		}
	}
}

func TestMergeVSCodeSettingsEdgeCases(t *testing.T) {
	t.Parallel()
	for _, src := range []string{
		`{}`, `{ }`, "{\n}\n", `{"a":1}`, `{"a":1,}`, `{"a":1 /* c */}`, "{\"a\":1 // c\n}",
		"{\n  // only a comment\n}", `{"terminal.integrated.profiles.linux":{}}`,
		"\xef\xbb\xbf{\"a\": 1}\n",
	} {
		got, err := MergeVSCodeSettings([]byte(src), "linux", "/bin/devgpu", projects)
		if err != nil {
			t.Errorf("%q: %v", src, err)
			continue
		}
		again, err := MergeVSCodeSettings(got, "linux", "/bin/devgpu", projects)
		if err != nil || !bytes.Equal(again, got) {
			t.Errorf("%q: not idempotent (%v):\n%s\n%s", src, err, got, again)
		}
	}
}

func TestVSCodeSettingsPath(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		goos string
		env  map[string]string
		want string
	}{
		{"linux", nil, filepath.Join("/home/ada", ".config", "Code", "User", "settings.json")},
		{"linux", map[string]string{"XDG_CONFIG_HOME": "/x"}, filepath.Join("/x", "Code", "User", "settings.json")},
		{"darwin", nil, filepath.Join("/home/ada", "Library", "Application Support", "Code", "User", "settings.json")},
		{"windows", map[string]string{"APPDATA": `C:\Users\ada\AppData\Roaming`}, `C:\Users\ada\AppData\Roaming\Code\User\settings.json`},
		{"linux", map[string]string{"DEVGPU_VSCODE_SETTINGS": "/t/s.json"}, "/t/s.json"},
	} {
		got, err := VSCodeSettingsPath(tc.goos, env(tc.env), "/home/ada")
		if err != nil || got != tc.want {
			t.Errorf("%s %v: got %q, %v; want %q", tc.goos, tc.env, got, err, tc.want)
		}
	}
	if _, err := VSCodeSettingsPath("windows", env(nil), ""); err == nil {
		t.Error("windows without APPDATA: want an error")
	}
}

func TestVisualStudioSteps(t *testing.T) {
	t.Parallel()
	golden(t, "visual-studio.golden", []byte(VisualStudioSteps(winExe, projects)))
}

func TestVSCodeSnippet(t *testing.T) {
	t.Parallel()
	golden(t, "vscode-snippet.golden", VSCodeSnippet("windows", winExe, projects))
}
