package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// The lines around the block that `devgpu config-ssh` owns in an ssh config.
const (
	sshBlockStart = "# --- devgpu start ---"
	sshBlockEnd   = "# --- devgpu end ---"
)

func newConfigSSHCmd() *cobra.Command {
	var print bool
	cmd := &cobra.Command{
		Use:   "config-ssh [--print]",
		Short: "Add a devgpu.PROJECT host per project to your OpenSSH config",
		Long: `Write a marked block into ~/.ssh/config (or $DEVGPU_SSH_CONFIG) with one
"Host devgpu.PROJECT" entry for each project you may use, whose ProxyCommand
is ` + "`devgpu ssh-proxy`" + `. Then ssh, scp, sftp, rsync -e ssh, ssh -L and VS Code
Remote-SSH reach a new GPU session with "ssh devgpu.PROJECT", with no keys to
manage. Running it again replaces the block in place and leaves the rest of
the file alone. --print writes nothing and prints the block.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, _, err := newClient()
			if err != nil {
				return err
			}
			who, err := client.Whoami(cmd.Context())
			if err != nil {
				return err
			}
			projects, err := client.Projects(cmd.Context())
			if err != nil {
				return err
			}
			names := make([]string, 0, len(projects))
			for _, p := range projects {
				names = append(names, p.Name)
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the devgpu binary for the ProxyCommand: %w", err)
			}
			if resolved, err := filepath.EvalSymlinks(exe); err == nil {
				exe = resolved
			}
			block := sshConfigBlock(exe, who.User, names)
			if print {
				_, err := os.Stdout.WriteString(block)
				return err
			}
			path, err := sshConfigPath()
			if err != nil {
				return err
			}
			if err := writeSSHConfig(path, block); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "devgpu: wrote %d host(s) to %s; try `ssh %s%s`\n", len(names), path, sshHostPrefix, firstOr(names, "PROJECT"))
			return nil
		},
	}
	cmd.Flags().BoolVar(&print, "print", false, "print the block instead of writing it")
	return cmd
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// sshConfigPath is $DEVGPU_SSH_CONFIG, else ~/.ssh/config.
func sshConfigPath() (string, error) {
	if p := os.Getenv("DEVGPU_SSH_CONFIG"); p != "" {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find your home directory: %w; set DEVGPU_SSH_CONFIG", err)
	}
	return filepath.Join(home, ".ssh", "config"), nil
}

// sshConfigBlock is the marked block: one host per project, sorted.
func sshConfigBlock(exe, user string, projects []string) string {
	projects = slices.Sorted(slices.Values(projects))
	var b strings.Builder
	b.WriteString(sshBlockStart + "\n")
	b.WriteString("# Written by `devgpu config-ssh`; run it again to update. Edits inside this block are lost.\n")
	for _, p := range projects {
		fmt.Fprintf(&b, "Host %s%s\n", sshHostPrefix, p)
		fmt.Fprintf(&b, "  ProxyCommand %s ssh-proxy %%h\n", sshQuote(exe))
		if user != "" {
			fmt.Fprintf(&b, "  User %s\n", user)
		}
		// Each session's agent has a fresh host key, and the tunnel is
		// already authenticated: there is nothing for known_hosts to pin.
		b.WriteString("  StrictHostKeyChecking no\n")
		b.WriteString("  UserKnownHostsFile /dev/null\n")
		b.WriteString("  LogLevel ERROR\n")
	}
	b.WriteString(sshBlockEnd + "\n")
	return b.String()
}

// sshQuote quotes a path for an ssh_config value when it needs it.
func sshQuote(s string) string {
	if !strings.ContainsAny(s, " \t\"") {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

// replaceSSHBlock puts block in place of the marked block in config, or
// appends it when there is none, leaving every other line as it was.
func replaceSSHBlock(config []byte, block string) ([]byte, error) {
	start := bytes.Index(config, []byte(sshBlockStart))
	if start < 0 {
		var out bytes.Buffer
		out.Write(config)
		if len(config) > 0 {
			if !bytes.HasSuffix(config, []byte("\n")) {
				out.WriteByte('\n')
			}
			out.WriteByte('\n')
		}
		out.WriteString(block)
		return out.Bytes(), nil
	}
	end := bytes.Index(config[start:], []byte(sshBlockEnd))
	if end < 0 {
		return nil, fmt.Errorf("the devgpu block has a start line (%q) but no end line (%q); fix or remove it", sshBlockStart, sshBlockEnd)
	}
	end += start + len(sshBlockEnd)
	if end < len(config) && config[end] == '\n' {
		end++
	}
	out := slices.Concat(config[:start], []byte(block), config[end:])
	return out, nil
}

// writeSSHConfig updates the block in the file at path atomically, creating
// the file (0600) and its directory (0700) when missing and keeping an
// existing file's mode.
func writeSSHConfig(path, block string) error {
	old, err := os.ReadFile(path)
	mode := fs.FileMode(0o600)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
		}
	case err != nil:
		return fmt.Errorf("read %s: %w", path, err)
	default:
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	}
	updated, err := replaceSSHBlock(old, block)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(updated, old) {
		return nil
	}
	// Write beside it and rename, through a symlink to the real file.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config.devgpu-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(updated); err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
