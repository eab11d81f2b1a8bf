//go:build linux

package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// The server writes DATA/server.pid while it runs: its pid and its start
// time in the kernel's clock ticks since boot (field 22 of /proc/PID/stat),
// so that `devgpu server stop` signals that very process, never another
// that came to reuse the pid, nor any process found by its name.

const pidFileName = "server.pid"

// serverStopWait bounds how long `devgpu server stop` waits for the
// server to exit after SIGTERM (it ends its shells and records their ends).
const serverStopWait = 30 * time.Second

// serverProcess is a running devgpu server as its pid file names it.
type serverProcess struct {
	pid   int
	start string // start time, in clock ticks since boot
}

// procStart returns the start time of pid from /proc/PID/stat.
func procStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", fmt.Errorf("/proc/%d/stat is not in the expected format", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); the start time is field 22.
	if len(fields) < 20 {
		return "", fmt.Errorf("/proc/%d/stat is not in the expected format", pid)
	}
	if fields[0] == "Z" {
		return "", fs.ErrNotExist // exited, not yet reaped
	}
	return fields[19], nil
}

// isDevgpuServer reports whether pid runs `devgpu server` on dataDir: its
// executable is a devgpu binary (the same file as ours, or one named
// devgpu) and its arguments are "server ...".
func isDevgpuServer(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) < 2 || args[1] != "server" {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)") // rebuilt while it runs
	if self, err := os.Executable(); err == nil && self == exe {
		return true
	}
	return strings.HasPrefix(filepath.Base(exe), "devgpu")
}

// writePidFile records this process as the server of dataDir, refusing
// when another live devgpu server has recorded itself there. The returned
// function removes the file, if it still names this process.
func writePidFile(dataDir string) (func(), error) {
	path := filepath.Join(dataDir, pidFileName)
	if other, ok := readServerPid(path); ok && other.pid != os.Getpid() {
		return nil, fmt.Errorf("another devgpu server (pid %d) runs on %s; stop it with `devgpu server stop --data %s`, or give this one another --data", other.pid, dataDir, dataDir)
	}
	start, err := procStart(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("read this process's start time: %w", err)
	}
	content := fmt.Sprintf("%d %s\n", os.Getpid(), start)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return nil, fmt.Errorf("write the pid file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write the pid file: %w", err)
	}
	return func() {
		if b, err := os.ReadFile(path); err == nil && string(b) == content {
			_ = os.Remove(path)
		}
	}, nil
}

// readServerPid returns the server the pid file names, if that process
// still runs, started when the file says, and is a devgpu server.
func readServerPid(path string) (serverProcess, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return serverProcess{}, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return serverProcess{}, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return serverProcess{}, false
	}
	p := serverProcess{pid: pid, start: f[1]}
	if start, err := procStart(pid); err != nil || start != p.start || !isDevgpuServer(pid) {
		return serverProcess{}, false
	}
	return p, true
}

func newServerStopCmd() *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the devgpu server of a data directory (its pid file), and nothing else",
		Long: `Stop the server that runs on the data directory (default: the one
` + "`devgpu server`" + ` uses), found through the pid file it keeps there,
DATA/server.pid. Only that process is signalled, after checking that it is
still the devgpu server that wrote the file; other devgpu servers and other
people's processes are never touched. It sends SIGTERM and waits until the
server has exited. Sessions keep running, as after any server stop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := dataDirPath(data)
			if err != nil {
				return err
			}
			path := filepath.Join(dir, pidFileName)
			p, ok := readServerPid(path)
			if !ok {
				if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("no devgpu server runs on %s (it has no %s); name another data directory with --data", dir, pidFileName)
				}
				return fmt.Errorf("the devgpu server that wrote %s is no longer running; nothing to stop", path)
			}
			if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
				return fmt.Errorf("signal the devgpu server (pid %d): %w", p.pid, err)
			}
			deadline := time.Now().Add(serverStopWait)
			for {
				if start, err := procStart(p.pid); err != nil || start != p.start {
					fmt.Fprintf(os.Stderr, "devgpu: stopped the server on %s (pid %d)\n", dir, p.pid)
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("the devgpu server (pid %d) has not exited %s after SIGTERM; see its log, or end it with kill -KILL %d", p.pid, serverStopWait, p.pid)
				}
				time.Sleep(50 * time.Millisecond)
			}
		},
	}
	cmd.Flags().StringVar(&data, "data", "", "the server's data directory (default $XDG_DATA_HOME/devgpu or ~/.local/share/devgpu)")
	return cmd
}

// dataDirPath is the data directory as resolveDataDir finds it, without
// creating it.
func dataDirPath(dir string) (string, error) {
	if dir == "" {
		base := os.Getenv("XDG_DATA_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("find the data directory: %w; pass --data DIR", err)
			}
			base = filepath.Join(home, ".local", "share")
		}
		dir = filepath.Join(base, "devgpu")
	}
	return filepath.Abs(dir)
}
