package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/integrate"
)

func testIntegrator(t *testing.T, goos string, env map[string]string, print bool) (*integrator, *bytes.Buffer, *bytes.Buffer) {
	var stdout, stderr bytes.Buffer
	return &integrator{
		goos:     goos,
		getenv:   func(k string) string { return env[k] },
		home:     t.TempDir(),
		exe:      "/opt/devgpu/bin/devgpu",
		stdout:   &stdout,
		stderr:   &stderr,
		projects: func(context.Context) ([]string, error) { return []string{"default", "ml-research"}, nil },
		print:    print,
	}, &stdout, &stderr
}

func TestIntegrateVSCodeWritesAndIsIdempotent(t *testing.T) {
	t.Parallel()
	path := writeTestFile(t, t.TempDir(), "Code/User/settings.json", "{\n    // keep me\n    \"editor.fontSize\": 13,\n}\n")
	in, stdout, _ := testIntegrator(t, "linux", map[string]string{"DEVGPU_VSCODE_SETTINGS": path}, false)
	if err := in.vscode(context.Background()); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(stdout.String()) != path {
		t.Errorf("stdout %q, want the path written", stdout.String())
	}
	first, _ := os.ReadFile(path)
	if !bytes.Contains(first, []byte("// keep me")) || !bytes.Contains(first, []byte(`"devgpu (ml-research)"`)) {
		t.Fatalf("unexpected settings:\n%s", first)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the file's own 0600 kept", fi.Mode().Perm())
	}
	in2, _, _ := testIntegrator(t, "linux", map[string]string{"DEVGPU_VSCODE_SETTINGS": path}, false)
	if err := in2.vscode(context.Background()); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(path)
	if !bytes.Equal(first, second) {
		t.Errorf("second run changed the file:\n%s", second)
	}
}

func TestIntegrateVSCodePrintWritesNothing(t *testing.T) {
	t.Parallel()
	const src = "{\"a\": 1}\n"
	path := writeTestFile(t, t.TempDir(), "settings.json", src)
	in, stdout, _ := testIntegrator(t, "darwin", map[string]string{"DEVGPU_VSCODE_SETTINGS": path}, true)
	if err := in.vscode(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != src {
		t.Errorf("--print changed the file")
	}
	if !strings.Contains(stdout.String(), "terminal.integrated.profiles.osx") {
		t.Errorf("--print output lacks the profiles:\n%s", stdout)
	}
}

func TestIntegrateVSCodeUnsafePrintsSnippet(t *testing.T) {
	t.Parallel()
	const src = "[\"not an object\"]\n"
	path := writeTestFile(t, t.TempDir(), "settings.json", src)
	in, stdout, _ := testIntegrator(t, "linux", map[string]string{"DEVGPU_VSCODE_SETTINGS": path}, false)
	err := in.vscode(context.Background())
	if err == nil || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("got %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(path); string(b) != src {
		t.Errorf("the refused file was changed")
	}
	if !strings.Contains(stdout.String(), `"devgpu (default)"`) {
		t.Errorf("no snippet printed:\n%s", stdout)
	}
}

func TestIntegrateWindowsTerminal(t *testing.T) {
	t.Parallel()
	local := t.TempDir()
	in, _, _ := testIntegrator(t, "windows", map[string]string{"LOCALAPPDATA": local}, false)
	if err := in.windowsTerminal(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(local, "Microsoft", "Windows Terminal", "Fragments", "devgpu")
	icon, err := os.ReadFile(filepath.Join(dir, "devgpu.png"))
	if err != nil || !bytes.Equal(icon, integrate.Icon) {
		t.Fatalf("icon not written: %v", err)
	}
	frag, err := os.ReadFile(filepath.Join(dir, "devgpu.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := integrate.WindowsTerminalFragment(in.exe, filepath.Join(dir, "devgpu.png"), []string{"default", "ml-research"})
	if !bytes.Equal(frag, want) {
		t.Errorf("fragment:\n%s\nwant:\n%s", frag, want)
	}
	_, _, stderr := testIntegrator(t, "windows", nil, false)
	in.stderr = stderr
	if err := in.windowsTerminal(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "already up to date") {
		t.Errorf("second run: %q", stderr)
	}
}

func TestIntegrateNotOnThisOS(t *testing.T) {
	t.Parallel()
	for _, goos := range []string{"linux", "darwin"} {
		in, stdout, _ := testIntegrator(t, goos, nil, false)
		if err := in.windowsTerminal(context.Background()); err == nil || !strings.Contains(err.Error(), "only on Windows") {
			t.Errorf("%s windows-terminal: %v", goos, err)
		}
		if err := in.visualStudio(context.Background()); err == nil || !strings.Contains(err.Error(), "only on Windows") {
			t.Errorf("%s visual-studio: %v", goos, err)
		}
		if stdout.Len() != 0 {
			t.Errorf("%s: printed %q", goos, stdout)
		}
		in.print = true
		if err := in.windowsTerminal(context.Background()); err != nil || !strings.Contains(stdout.String(), `"guid"`) {
			t.Errorf("%s windows-terminal --print: %v\n%s", goos, err, stdout)
		}
		stdout.Reset()
		if err := in.visualStudio(context.Background()); err != nil || !strings.Contains(stdout.String(), "Tools > Options") {
			t.Errorf("%s visual-studio --print: %v\n%s", goos, err, stdout)
		}
	}
}

// Completion is cobra's, enabled and visible.
func TestCompletionCommand(t *testing.T) {
	t.Parallel()
	root := newRoot()
	root.InitDefaultCompletionCmd()
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		cmd, _, err := root.Find([]string{"completion", shell})
		if err != nil || cmd.Name() != shell || cmd.Hidden || cmd.Parent().Hidden {
			t.Errorf("completion %s: %v", shell, err)
		}
	}
	if root.CompletionOptions.DisableDefaultCmd {
		t.Error("the completion command is disabled")
	}
}
