package server

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// meterRuntime is a runtime that measures workspaces itself, as the oci
// runtime with disk limits does.
type meterRuntime struct {
	*inproc.Runtime
	usage func(dir string) (int64, error)
}

func (m meterRuntime) WorkspaceUsage(dir string) (int64, error) { return m.usage(dir) }

// Where the runtime measures and enforces a workspace's limit, the server
// takes its word however many files the workspace holds: a full workspace
// stays writable (writes fail with ENOSPC, deletes work) with a warning,
// one over a lowered limit goes in read-only. Where it cannot measure, the
// server walks the workspace as before.
func TestWorkspaceMeasuredByRuntime(t *testing.T) {
	t.Parallel()
	const limit = 64 << 20
	dir := t.TempDir()
	sess := store.Session{Project: "p", User: "u"}
	w := sdk.Workspace{Enabled: true, LimitBytes: limit}
	for _, c := range []struct {
		name     string
		used     int64
		err      error
		readOnly bool
		warning  string
	}{
		{"below", limit / 2, nil, false, ""},
		{"full", limit, nil, false, "is full (its limit is 67 MB), so writes to it fail"},
		{"almost full", limit - 1<<20, nil, false, "is full"},
		{"some room left", limit - 8<<20, nil, false, ""},
		{"over a lowered limit", 2 * limit, nil, true, "uses 134 MB of its 67 MB limit, so this session has it read-only"},
		// The runtime cannot say: the server walks 8 kB of files against a
		// 4 kB limit.
		{"walked", 0, errors.New("no disk limits"), true, "uses 8.0 kB of its 4.0 kB limit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rt := meterRuntime{
				Runtime: inproc.New(inproc.NewRegistry(testutil.ShortTempDir(t))),
				usage: func(got string) (int64, error) {
					if want := filepath.Join(dir, "p", "u"); got != want {
						t.Errorf("runtime asked about %s, want %s", got, want)
					}
					return c.used, c.err
				},
			}
			s := &Server{backends: []Backend{{Name: "local", Runtime: rt}}, log: slog.New(slog.DiscardHandler), cfg: Config{WorkspaceDir: dir}}
			w := w
			if c.err != nil {
				w.LimitBytes = 4000
				if err := os.MkdirAll(filepath.Join(dir, "p", "u"), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "p", "u", "big"), make([]byte, 8000), 0o600); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Remove(filepath.Join(dir, "p", "u", "big")) })
			}
			got, readOnly, err := s.workspace(sess, w)
			if err != nil || got != filepath.Join(dir, "p", "u") || readOnly != c.readOnly {
				t.Errorf("workspace() = %q, read-only %v, %v; want read-only %v", got, readOnly, err, c.readOnly)
			}
			warning := s.workspaceWarning(sess, w)
			if c.warning == "" && warning != "" || !strings.Contains(warning, c.warning) {
				t.Errorf("warning %q, want one with %q", warning, c.warning)
			}
		})
	}
}
