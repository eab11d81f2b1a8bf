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
	parent string // the runtime's cgroup directory, there while a session is
	total  int    // the parent's pids.max
	v2     bool
}

// cgroupRoot is where the cgroup filesystems are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// openCgroups finds the pids hierarchy (cgroup v1's pids controller, or
// v2's unified hierarchy, with the pids controller enabled down to the
// runtime's cgroup) and checks, by making it, that the runtime's parent
// cgroup can be made there. It fails where the hierarchy is not writable,
// which is the case for a server that does not run as root.
func openCgroups(dir string, total int) (*cgroups, error) {
	// Servers that reach one directory by different paths (replicas on
	// one host linking a shared one) must name the same cgroup.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	sum := sha256.Sum256([]byte(dir))
	name := "local-" + hex.EncodeToString(sum[:4])
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return nil, fmt.Errorf("no cgroup filesystem at %s: %w", cgroupRoot, err)
	}
	c := &cgroups{total: total}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		c.v2 = true
		c.parent = filepath.Join(cgroupRoot, "devgpu", name)
	} else {
		pids := filepath.Join(cgroupRoot, "pids")
		if err := unix.Statfs(pids, &st); err != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			return nil, fmt.Errorf("no cgroup v1 pids controller at %s", pids)
		}
		c.parent = filepath.Join(pids, "devgpu", name)
	}
	if err := c.ensureParent(); err != nil {
		return nil, err
	}
	c.removeParent()
	return c, nil
}

// ensureParent makes the runtime's cgroup with its limit, the sum of all
// its sessions'.
func (c *cgroups) ensureParent() error {
	if err := os.MkdirAll(c.parent, 0o755); err != nil {
		return err
	}
	if c.v2 {
		// Enable pids for the children of the root, of devgpu and of the
		// runtime's cgroup, which hold no processes themselves.
		for _, d := range []string{cgroupRoot, filepath.Dir(c.parent), c.parent} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+pids"), 0); err != nil {
				return fmt.Errorf("enable the pids controller in %s: %w", d, err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(c.parent, "pids.max"), []byte(strconv.Itoa(c.total)), 0); err != nil {
		return fmt.Errorf("limit the processes of all sessions: %w", err)
	}
	return nil
}

// removeParent removes the runtime's cgroup if no session has one, so that
// a runtime leaves nothing behind when its last session ends.
func (c *cgroups) removeParent() { _ = os.Remove(c.parent) }

func (c *cgroups) dir(id string) string { return filepath.Join(c.parent, id) }

// create makes the session's cgroup with its limit.
func (c *cgroups) create(id string, max int) error {
	d := c.dir(id)
	for attempt := 0; ; attempt++ {
		if err := c.ensureParent(); err != nil {
			return fmt.Errorf("create the sessions' cgroup: %w", err)
		}
		err := os.Mkdir(d, 0o755)
		if err == nil || errors.Is(err, os.ErrExist) {
			break
		}
		// A Stop may have removed the parent between the two steps.
		if !errors.Is(err, os.ErrNotExist) || attempt == 2 {
			return fmt.Errorf("create the session's cgroup: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(d, "pids.max"), []byte(strconv.Itoa(max)), 0); err != nil {
		return fmt.Errorf("limit the session's processes: %w", err)
	}
	return nil
}

// sweep removes the cgroups of sessions that keep says are gone (their
// directory went without a Stop), killing what is left in them.
func (c *cgroups) sweep(ctx context.Context, keep func(id string) bool) {
	entries, _ := os.ReadDir(c.parent)
	for _, e := range entries {
		if e.IsDir() && !keep(e.Name()) {
			_ = c.remove(ctx, e.Name())
		}
	}
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
			c.removeParent()
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("remove the session's cgroup: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
