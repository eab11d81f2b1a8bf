package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Install copies the running executable to dest (a file path, or a
// directory to put "devgpu" in) with mode 0755, through a temporary file
// in the same directory and a rename, so that nobody ever runs a half
// written agent. The kube runtime's init container runs it from the small
// agent image, which has no shell or cp, to put the static agent into the
// volume the session's container shares.
func Install(dest string) error {
	if fi, err := os.Stat(dest); err == nil && fi.IsDir() {
		dest = filepath.Join(dest, "devgpu")
	}
	exe, err := os.Executable()
	if err != nil {
		// Without /proc (a bare chroot), an absolute argv[0] is as good.
		if !filepath.IsAbs(os.Args[0]) {
			return fmt.Errorf("install the agent: find the running executable: %w; run it by its absolute path", err)
		}
		exe = os.Args[0]
	}
	src, err := os.Open(exe)
	if err != nil {
		return fmt.Errorf("install the agent: %w", err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".devgpu-install-*")
	if err != nil {
		return fmt.Errorf("install the agent to %s: %w; the directory must exist and be writable", dest, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing left to remove
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return fmt.Errorf("install the agent to %s: %w", dest, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("install the agent to %s: %w", dest, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("install the agent to %s: %w", dest, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("install the agent to %s: %w", dest, err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return fmt.Errorf("install the agent to %s: %w", dest, err)
	}
	return nil
}
