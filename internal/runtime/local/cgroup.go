package local

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroups keeps one pids cgroup per session below a parent of this runtime
// (one per session directory), so that a session's processes are bounded
// (pids.max: a fork bomb fails inside the session), all counted together
// (the parent's pids.max: sessions together cannot take the host's process
// table) and found again by the runtime, whatever they did to their
// environment or their session id.
type cgroups struct {
	parent string // the runtime's cgroup directory
}

// cgroupRoot is where the cgroup filesystems are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// openCgroups creates the runtime's parent cgroup in the pids hierarchy
// (cgroup v1's pids controller, or v2's unified hierarchy with the pids
// controller enabled down to it) with total as its pids.max. It fails
// where the hierarchy is not writable, which is the case for a server
// that does not run as root.
func openCgroups(dir string, total int) (*cgroups, error) {
	sum := sha256.Sum256([]byte(dir))
	name := "local-" + hex.EncodeToString(sum[:4])
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return nil, fmt.Errorf("no cgroup filesystem at %s: %w", cgroupRoot, err)
	}
	var parent string
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		// v2: enable pids for the children of the root, of devgpu and of
		// the runtime's own cgroup, which hold no processes themselves.
		parent = filepath.Join(cgroupRoot, "devgpu", name)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
		for _, d := range []string{cgroupRoot, filepath.Dir(parent), parent} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+pids"), 0); err != nil {
				return nil, fmt.Errorf("enable the pids controller in %s: %w", d, err)
			}
		}
	} else {
		pids := filepath.Join(cgroupRoot, "pids")
		if err := unix.Statfs(pids, &st); err != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			return nil, fmt.Errorf("no cgroup v1 pids controller at %s", pids)
		}
		parent = filepath.Join(pids, "devgpu", name)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(parent, "pids.max"), []byte(strconv.Itoa(total)), 0); err != nil {
		return nil, fmt.Errorf("limit the processes of all sessions: %w", err)
	}
	return &cgroups{parent: parent}, nil
}

func (c *cgroups) dir(id string) string { return filepath.Join(c.parent, id) }

// create makes the session's cgroup with its limit, and returns it.
func (c *cgroups) create(id string, max int) error {
	d := c.dir(id)
	if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create the session's cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d, "pids.max"), []byte(strconv.Itoa(max)), 0); err != nil {
		return fmt.Errorf("limit the session's processes: %w", err)
	}
	return nil
}

// add moves pid into the session's cgroup; its children will be born there.
func (c *cgroups) add(id string, pid int) error {
	if err := os.WriteFile(filepath.Join(c.dir(id), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move the agent into the session's cgroup: %w", err)
	}
	return nil
}

// pids lists the processes in the session's cgroup (none when it is gone).
func (c *cgroups) pids(id string) ([]int, error) {
	f, err := os.Open(filepath.Join(c.dir(id), "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, sc.Err()
}

// remove kills every process left in the session's cgroup until none is
// left, then removes the cgroup. A process forking as fast as it can is
// caught because the cgroup's count, not a scan, says when it is empty.
func (c *cgroups) remove(ctx context.Context, id string) error {
	deadline := time.Now().Add(stopTimeout)
	for {
		pids, err := c.pids(id)
		if err != nil {
			return fmt.Errorf("list the session's processes: %w", err)
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d processes of the session survive SIGKILL", len(pids))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A cgroup whose last process has just exited may still be busy for a
	// moment (its zombies are being reaped).
	for {
		err := os.Remove(c.dir(id))
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("remove the session's cgroup: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
