package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/integrate"
)

// integrator holds what the integrate commands need from the machine, so
// that tests can give them another.
type integrator struct {
	goos     string
	getenv   func(string) string
	home     string
	exe      string // the devgpu executable's absolute path
	stdout   io.Writer
	stderr   io.Writer
	projects func(ctx context.Context) ([]string, error)
	print    bool
}

func newIntegrateCmd() *cobra.Command {
	var project string
	var print bool
	in := &integrator{goos: runtime.GOOS, getenv: os.Getenv, stdout: os.Stdout, stderr: os.Stderr}
	cmd := &cobra.Command{
		Use:   "integrate",
		Short: "Add devgpu shell profiles to Windows Terminal, VS Code or Visual Studio",
		Long: `Add a terminal profile per project that opens ` + "`devgpu shell --project P`" + `.
Without --project, every project you may use gets one. Running it again
updates the profiles in place. --print writes nothing and prints what would
be written.`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			in.home, _ = os.UserHomeDir()
			in.print = print
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the devgpu executable: %w", err)
			}
			if p, err := filepath.EvalSymlinks(exe); err == nil {
				exe = p
			}
			in.exe = exe
			in.projects = func(ctx context.Context) ([]string, error) { return integrationProjects(ctx, project) }
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&project, "project", "", "only this project (default: every project you may use)")
	cmd.PersistentFlags().BoolVar(&print, "print", false, "write nothing; print what would be written")
	cmd.AddCommand(
		&cobra.Command{
			Use:   "windows-terminal",
			Short: "Write a Windows Terminal fragment with a profile per project",
			Args:  cobra.NoArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return in.windowsTerminal(cmd.Context()) },
		},
		&cobra.Command{
			Use:   "vscode",
			Short: "Add terminal profiles to VS Code's user settings.json",
			Args:  cobra.NoArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return in.vscode(cmd.Context()) },
		},
		&cobra.Command{
			Use:   "visual-studio",
			Short: "Print the steps that add terminal profiles to Visual Studio",
			Args:  cobra.NoArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return in.visualStudio(cmd.Context()) },
		},
	)
	return cmd
}

// integrationProjects is the one project asked for, after checking that the
// caller may see it, or every project the caller may use.
func integrationProjects(ctx context.Context, project string) ([]string, error) {
	client, _, err := newClient()
	if err != nil {
		return nil, err
	}
	if project != "" {
		p, err := client.Project(ctx, project)
		if err != nil {
			return nil, fmt.Errorf("project %s: %w", project, err)
		}
		return []string{p.Name}, nil
	}
	ps, err := client.Projects(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ps))
	for _, p := range ps {
		names = append(names, p.Name)
	}
	if len(names) == 0 {
		return nil, errors.New("you are not a member of any project yet; ask a project admin to add you")
	}
	sort.Strings(names)
	return names, nil
}

func (in *integrator) windowsTerminal(ctx context.Context) error {
	windows := in.goos == "windows"
	if !windows && !in.print {
		return errors.New("Windows Terminal runs only on Windows, so nothing was written here; run this on Windows, or add --print to see the fragment")
	}
	projects, err := in.projects(ctx)
	if err != nil {
		return err
	}
	var dir, exe, shownDir string
	if windows {
		local := in.getenv("LOCALAPPDATA")
		if local == "" {
			return errors.New("%LOCALAPPDATA% is not set, so Windows Terminal's Fragments folder cannot be found")
		}
		dir = filepath.Join(local, "Microsoft", "Windows Terminal", "Fragments", integrate.FragmentApp)
		exe, shownDir = in.exe, dir
	} else {
		exe, shownDir = "devgpu.exe", `%LOCALAPPDATA%\Microsoft\Windows Terminal\Fragments\`+integrate.FragmentApp
	}
	fragmentPath := shownDir + `\` + integrate.FragmentFile
	iconPath := shownDir + `\` + integrate.IconFile
	if windows {
		fragmentPath, iconPath = filepath.Join(dir, integrate.FragmentFile), filepath.Join(dir, integrate.IconFile)
	}
	fragment := integrate.WindowsTerminalFragment(exe, iconPath, projects)
	if in.print {
		fmt.Fprintf(in.stderr, "# would write %s (and the icon, %d bytes, to %s):\n", fragmentPath, len(integrate.Icon), iconPath)
		_, err := in.stdout.Write(fragment)
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	changed := false
	for _, f := range []struct {
		path string
		data []byte
	}{{iconPath, integrate.Icon}, {fragmentPath, fragment}} {
		c, err := writeIfChanged(f.path, f.data, 0o644)
		if err != nil {
			return err
		}
		changed = changed || c
	}
	if !changed {
		fmt.Fprintf(in.stderr, "%s is already up to date\n", fragmentPath)
		return nil
	}
	fmt.Fprintln(in.stdout, fragmentPath)
	fmt.Fprintf(in.stderr, "Wrote %d profile(s); open a new Windows Terminal window to see them.\n", len(projects))
	return nil
}

func (in *integrator) vscode(ctx context.Context) error {
	path, err := integrate.VSCodeSettingsPath(in.goos, in.getenv, in.home)
	if err != nil {
		return err
	}
	projects, err := in.projects(ctx)
	if err != nil {
		return err
	}
	snippet := integrate.VSCodeSnippet(in.goos, in.exe, projects)
	src, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dir := filepath.Dir(path)
		if _, statErr := os.Stat(dir); statErr != nil && in.getenv("DEVGPU_VSCODE_SETTINGS") == "" && !in.print {
			in.stdout.Write(snippet)
			return fmt.Errorf("VS Code's settings folder %s does not exist (VS Code creates it on first start), so nothing was written; add the snippet above to settings.json by hand", dir)
		}
	case err != nil:
		in.stdout.Write(snippet)
		return fmt.Errorf("read %s: %w; nothing was written; add the snippet above by hand", path, err)
	}
	merged, err := integrate.MergeVSCodeSettings(src, in.goos, in.exe, projects)
	if err != nil {
		in.stdout.Write(snippet)
		return fmt.Errorf("%s: %w; nothing was written; add the snippet above by hand", path, err)
	}
	if in.print {
		fmt.Fprintf(in.stderr, "# would write %s:\n", path)
		_, err := in.stdout.Write(merged)
		return err
	}
	if bytes.Equal(merged, src) {
		fmt.Fprintf(in.stderr, "%s already has the devgpu profiles\n", path)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if _, err := writeIfChanged(path, merged, 0o644); err != nil {
		return err
	}
	fmt.Fprintln(in.stdout, path)
	fmt.Fprintf(in.stderr, "Added %d profile(s) under %q; pick one from the + menu of VS Code's terminal.\n", len(projects), integrate.VSCodeProfilesKey(in.goos))
	return nil
}

func (in *integrator) visualStudio(ctx context.Context) error {
	exe := in.exe
	if in.goos != "windows" {
		if !in.print {
			return errors.New("Visual Studio runs only on Windows, so there is nothing to set up here; run this on Windows, or add --print to see the steps")
		}
		exe = `C:\path\to\devgpu.exe`
	}
	projects, err := in.projects(ctx)
	if err != nil {
		return err
	}
	_, err = io.WriteString(in.stdout, integrate.VisualStudioSteps(exe, projects))
	return err
}

// writeIfChanged replaces path with data, atomically and keeping its mode,
// unless it already holds data. It reports whether it wrote.
func writeIfChanged(path string, data []byte, mode fs.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}
