package gpu

import (
	"context"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func TestParseSimulated(t *testing.T) {
	t.Parallel()
	devs, err := ParseSimulated("t4:2,a100:1@westus3")
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{ID: "GPU-sim-t4-0", Type: "t4", Region: "local", Name: "simulated t4"},
		{ID: "GPU-sim-t4-1", Type: "t4", Region: "local", Name: "simulated t4"},
		{ID: "GPU-sim-a100-westus3-0", Type: "a100", Region: "westus3", Name: "simulated a100"},
	}
	if !reflect.DeepEqual(devs, want) {
		t.Fatalf("got %+v\nwant %+v", devs, want)
	}
	for _, bad := range []string{"", "t4", "t4:0", "t4:x", "T4:1", "t4:1,t4:2", "t4:1@", "t4:-1"} {
		if _, err := ParseSimulated(bad); err == nil {
			t.Errorf("ParseSimulated(%q) succeeded, want an error", bad)
		}
	}
}

func FuzzParseSimulated(f *testing.F) {
	for _, s := range []string{"t4:4", "t4:4,a100:2", "t4:1@r", ",", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		devs, err := ParseSimulated(s)
		if err != nil {
			return
		}
		ids := map[string]bool{}
		for _, d := range devs {
			if ids[d.ID] {
				t.Fatalf("duplicate device id %s from %q", d.ID, s)
			}
			ids[d.ID] = true
			if !validName(d.Type) || !validName(d.Region) {
				t.Fatalf("invalid names in %+v from %q", d, s)
			}
		}
	})
}

func TestTypeOf(t *testing.T) {
	t.Parallel()
	for product, want := range map[string]string{
		"Tesla T4":                "t4",
		"NVIDIA A100-SXM4-80GB":   "a100",
		"NVIDIA H100 80GB HBM3":   "h100",
		"NVIDIA H200":             "h200",
		"NVIDIA GeForce RTX 4090": "rtx4090",
		"NVIDIA L4":               "l4",
		"":                        "gpu",
	} {
		if got := TypeOf(product); got != want {
			t.Errorf("TypeOf(%q) = %q, want %q", product, got, want)
		}
	}
}

func TestParseSMI(t *testing.T) {
	t.Parallel()
	out := "GPU-5f8c1a2b-0000-1111-2222-333344445555, NVIDIA H100 80GB HBM3\nGPU-aaaa, Tesla T4\n\n"
	devs := parseSMI(out)
	if len(devs) != 2 || devs[0].ID != "GPU-5f8c1a2b-0000-1111-2222-333344445555" || devs[0].Type != "h100" || devs[1].Type != "t4" {
		t.Fatalf("parseSMI = %+v", devs)
	}
}

// On this host (no GPU) discovery must find nothing and not fail; on a GPU
// host every device must have an NVML-style UUID.
func TestDiscover(t *testing.T) {
	t.Parallel()
	devs, err := Discover(context.Background(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if !strings.HasPrefix(d.ID, "GPU-") || d.Type == "" {
			t.Errorf("discovered device %+v lacks a UUID or type", d)
		}
	}
}

// Utilization reads nothing of simulated or unknown devices; on a host
// with GPUs (and NVML) it reads a percentage of each of them.
func TestUtilization(t *testing.T) {
	t.Parallel()
	if u, ok := Utilization([]string{"GPU-sim-t4-0", "GPU-00000000-0000-0000-0000-000000000000"}); ok {
		t.Errorf("Utilization(simulated, unknown) = %d, true; want not known", u)
	}
	if _, ok := Utilization(nil); ok {
		t.Error("Utilization(none) is known")
	}
	devs, err := discoverNVML()
	if err != nil || len(devs) == 0 {
		t.Skipf("no GPU NVML can read here (%v): only the unknown cases ran", err)
	}
	for _, d := range devs {
		u, ok := Utilization([]string{"GPU-sim-t4-0", d.ID})
		if !ok || u < 0 || u > 100 {
			t.Errorf("Utilization(%s) = %d, %v; want a percentage", d.ID, u, ok)
		}
	}
}
