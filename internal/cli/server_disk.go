//go:build linux

package cli

import (
	"fmt"

	"github.com/dustin/go-humanize"

	"github.com/devgpu/devgpu/internal/runtime/oci"
)

// diskConfig is the oci runtime's disk limits from the server config: the
// pool's size and each session's writable layer, per GPU type or one for
// all. The runtime always has them; empty fields take its defaults.
func (c ociConfig) diskConfig() (*oci.DiskConfig, error) {
	size := func(field, v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		n, err := humanize.ParseBytes(v)
		if err != nil || n == 0 || n > 1<<62 {
			return 0, fmt.Errorf("oci %s %q is not a size such as 20GB", field, v)
		}
		return int64(n), nil
	}
	pool, err := size("disk_pool", c.DiskPool)
	if err != nil {
		return nil, err
	}
	d := &oci.DiskConfig{PoolSize: pool, LayerLimits: map[string]int64{}}
	if d.LayerLimits[""], err = size("writable_layer", c.WritableLayer); err != nil {
		return nil, err
	}
	for typ, v := range c.WritableLayerPerGPU {
		if d.LayerLimits[typ], err = size("writable_layer_per_gpu."+typ, v); err != nil {
			return nil, err
		}
	}
	return d, nil
}
