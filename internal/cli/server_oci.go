//go:build linux

package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/devgpu/devgpu/internal/runtime/oci"
)

// ociLimits are the cgroup limits of sessions of one GPU type, in the
// server's config file. Zero (or absent) is the sessions' share of the
// host, which is also the most any session gets.
type ociLimits struct {
	CPUs   float64 `json:"cpus"`
	Memory string  `json:"memory"` // "56GB"
	Pids   int64   `json:"pids"`
}

// limits turns the config's per-type limits into the runtime's; nil
// without any, for the runtime's defaults.
func (c ociConfig) limits() (map[string]oci.Limits, error) {
	if c.Limits == nil {
		return nil, nil
	}
	out := map[string]oci.Limits{}
	for typ, l := range c.Limits {
		if l.CPUs < 0 || l.Pids < 0 {
			return nil, fmt.Errorf("oci limits of %q: cpus and pids must be 0 (the host's share) or more", typ)
		}
		var mem uint64
		if l.Memory != "" {
			var err error
			if mem, err = humanize.ParseBytes(l.Memory); err != nil {
				return nil, fmt.Errorf("oci limits of %q: memory %q is not a size such as 56GB", typ, l.Memory)
			}
		}
		out[typ] = oci.Limits{CPUs: l.CPUs, Memory: int64(mem), Pids: l.Pids}
	}
	if _, ok := out[""]; !ok {
		out[""] = oci.DefaultLimits()[""]
	}
	return out, nil
}

// serverOOMScoreAdj is the control plane's oom_score_adj when it runs as
// root: the host's OOM killer takes sessions (500 and up) first and the
// server only after the host's ordinary processes.
const serverOOMScoreAdj = -500

// protectFromOOM lowers this process's oom_score_adj, which only root may
// do; elsewhere it says what it could not do.
func protectFromOOM(log *slog.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(serverOOMScoreAdj)), 0); err != nil {
		log.Warn("cannot protect the control plane from the OOM killer; run it as root with CAP_SYS_RESOURCE", "err", err)
	}
}
