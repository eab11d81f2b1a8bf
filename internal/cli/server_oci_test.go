//go:build linux

package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/devgpu/devgpu/internal/runtime/oci"
)

// The oci section of the server's config names the seccomp profile and
// the limits per GPU type; a type not listed keeps the default's "" entry.
func TestOCIConfigHardening(t *testing.T) {
	t.Parallel()
	var c ociConfig
	if err := json.Unmarshal([]byte(`{"seccomp": "unconfined", "limits": {"a100": {"cpus": 12, "memory": "100GB", "pids": 2048}}}`), &c); err != nil {
		t.Fatal(err)
	}
	if c.Seccomp != oci.SeccompUnconfined {
		t.Errorf("seccomp %q", c.Seccomp)
	}
	limits, err := c.limits()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := limits["a100"], (oci.Limits{CPUs: 12, Memory: 100e9, Pids: 2048}); got != want {
		t.Errorf("a100 limits %+v, want %+v", got, want)
	}
	if got, want := limits[""], oci.DefaultLimits()[""]; got != want {
		t.Errorf("default limits %+v, want %+v", got, want)
	}
	if l, err := (ociConfig{}).limits(); l != nil || err != nil {
		t.Errorf("no limits configured: %v, %v; want the runtime's defaults (nil)", l, err)
	}
	for _, bad := range []ociLimits{{Memory: "lots"}, {CPUs: -1}, {Pids: -5}} {
		if _, err := (ociConfig{Limits: map[string]ociLimits{"t4": bad}}).limits(); err == nil || !strings.Contains(err.Error(), `"t4"`) {
			t.Errorf("limits %+v: %v, want an error naming the type", bad, err)
		}
	}
}
