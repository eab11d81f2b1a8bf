package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// workspaceMeasureLimit bounds how long walking a workspace may take at a
// session's start, on runtimes that cannot measure it (local); a workspace
// too large to walk in time is not held to its limit there (and the server
// logs it). The oci runtime measures instantly and enforces the limit
// itself (runtime.Spec.WorkspaceLimitBytes).
const workspaceMeasureLimit = 2 * time.Second

// workspaceFullSlack is how close to its limit a workspace the runtime
// holds to its limit counts as full: a filesystem refuses writes while it
// still shows some space free (ext4 reserves room for the metadata of
// pending writes, about a megabyte).
const workspaceFullSlack = 4 << 20

// workspaceMeter is a runtime that reads a workspace's usage from its
// filesystem's counters, however many files it holds, instead of the
// server walking it.
type workspaceMeter interface {
	WorkspaceUsage(dir string) (int64, error)
}

// workspacePath is the user's persistent workspace in the project.
// Project and user names are validated path elements.
func (s *Server) workspacePath(sess store.Session) string {
	return filepath.Join(s.cfg.WorkspaceDir, sess.Project, sess.User)
}

// workspace prepares the session's workspace: its directory, and whether
// it goes in read-only because it is over its limit. Where the runtime
// enforces the limit itself, a full workspace stays writable, so that the
// user can delete files (writes fail with ENOSPC); only one over its limit
// (the limit was lowered) goes in read-only.
func (s *Server) workspace(sess store.Session, w sdk.Workspace) (dir string, readOnly bool, err error) {
	if !w.Enabled || s.cfg.WorkspaceDir == "" {
		return "", false, nil
	}
	dir = s.workspacePath(sess)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("create workspace: %w", err)
	}
	used, ok, enforced := s.workspaceUse(s.backendOf(sess).Runtime, dir)
	over := used > w.LimitBytes || !enforced && used == w.LimitBytes
	return dir, ok && w.LimitBytes > 0 && over, nil
}

// workspaceWarning tells the user their workspace is full.
func (s *Server) workspaceWarning(sess store.Session, w sdk.Workspace) string {
	if !w.Enabled || w.LimitBytes <= 0 || s.cfg.WorkspaceDir == "" {
		return ""
	}
	used, ok, enforced := s.workspaceUse(s.backendOf(sess).Runtime, s.workspacePath(sess))
	full := used >= w.LimitBytes
	if enforced {
		full = used >= w.LimitBytes-workspaceFullSlack
	}
	switch {
	case !ok || !full:
		return ""
	case enforced && used <= w.LimitBytes:
		return fmt.Sprintf("your workspace in project %s is full (its limit is %s), so writes to it fail; delete files to make room",
			sess.Project, humanize.Bytes(uint64(w.LimitBytes)))
	}
	return fmt.Sprintf("your workspace in project %s uses %s of its %s limit, so this session has it read-only; delete files to write to it again",
		sess.Project, humanize.Bytes(uint64(used)), humanize.Bytes(uint64(w.LimitBytes)))
}

// workspaceUse asks the session's runtime what the workspace at dir uses (enforced:
// the runtime holds it to its limit), or else adds up the sizes of the
// files under dir, within workspaceMeasureLimit; ok is false when it could
// not finish.
func (s *Server) workspaceUse(rt runtime.Runtime, dir string) (used int64, ok, enforced bool) {
	if m, isMeter := rt.(workspaceMeter); isMeter {
		used, err := m.WorkspaceUsage(dir)
		if err == nil {
			return used, true, true
		}
		s.log.Debug("runtime cannot measure the workspace; walking it", "dir", dir, "err", err)
	}
	deadline := time.Now().Add(workspaceMeasureLimit)
	errTooLong := errors.New("too long")
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // a file removed meanwhile, or unreadable: skip it
		}
		if time.Now().After(deadline) {
			return errTooLong
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				used += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("workspace too large to measure in time; its limit is not applied", "dir", dir)
		return used, false, false
	}
	return used, true, false
}
