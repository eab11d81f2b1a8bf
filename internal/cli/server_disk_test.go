//go:build linux

package cli

import (
	"maps"
	"strings"
	"testing"
)

func TestOCIDiskConfig(t *testing.T) {
	t.Parallel()
	d, err := ociConfig{DiskPool: "500GB", WritableLayer: "20GiB", WritableLayerPerGPU: map[string]string{"a100": "200GB"}}.diskConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"": 20 << 30, "a100": 200e9}
	if d.PoolSize != 500e9 || !maps.Equal(d.LayerLimits, want) {
		t.Errorf("disk config %+v, want pool 500e9 and layers %v", d, want)
	}
	// Empty fields take the runtime's defaults; disk limits are never off.
	if d, err := (ociConfig{}).diskConfig(); err != nil || d == nil || d.PoolSize != 0 || d.LayerLimits[""] != 0 {
		t.Errorf("default disk config %+v, %v", d, err)
	}
	for _, c := range []ociConfig{{DiskPool: "lots"}, {WritableLayer: "0"}, {WritableLayerPerGPU: map[string]string{"t4": "-1GB"}}} {
		if _, err := c.diskConfig(); err == nil || !strings.Contains(err.Error(), "is not a size such as 20GB") {
			t.Errorf("%+v: %v, want an error naming the field and a size to give", c, err)
		}
	}
}
