//go:build linux

package cli

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An image is in use exactly while an overlay has its directory as a
// lower layer, as the oci runtime mounts them.
func TestMountedImages(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test mounts an overlay and needs root")
		}
		t.Skip("needs root to mount an overlay")
	}
	root := t.TempDir()
	hex := strings.Repeat("ab", 32)
	lower := filepath.Join(root, "rootfs", "sha256", hex)
	upper, work, target := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.MkdirAll(lower, 0o755); err != nil {
		t.Fatal(err)
	}
	inUse := mountedImages(root)
	if inUse("sha256:" + hex) {
		t.Fatal("an image no overlay uses is reported in use")
	}
	if err := syscall.Mount("overlay", target, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(target, 0)
	if !inUse("sha256:" + hex) {
		t.Fatal("an image under a mounted overlay is reported unused")
	}
	if inUse("sha256:" + strings.Repeat("cd", 32)) {
		t.Fatal("another image is reported in use")
	}
	if !inUse("md5:whatever") {
		t.Fatal("a digest it cannot read must count as in use")
	}
}

func TestRatesConfig(t *testing.T) {
	t.Parallel()
	card, err := ratesConfig{Currency: "EUR", PerGPUHour: map[string]float64{"t4": 0.35, "a100@west": 3.1}}.card()
	if err != nil || len(card.Rates) != 2 || card.Rates[0].GPUType != "a100" || card.Rates[0].Region != "west" ||
		card.Rates[0].PerHourMicros != 3_100_000 || card.Rates[1].PerHourMicros != 350_000 {
		t.Fatalf("card = %+v, %v", card, err)
	}
	if _, err := (ratesConfig{PerGPUHour: map[string]float64{"t4": 1}}).card(); err == nil {
		t.Fatal("rates without a currency accepted")
	}
	if _, err := (ratesConfig{Currency: "EUR", PerGPUHour: map[string]float64{"t4": -1}}).card(); err == nil {
		t.Fatal("a negative rate accepted")
	}
}
