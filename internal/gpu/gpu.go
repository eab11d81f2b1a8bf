// Package gpu finds the GPUs a host can lend to sessions: real NVIDIA devices
// through NVML or nvidia-smi, or a simulated inventory where there are none.
// Reservations themselves live in the store, so that they are transactional.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
)

// Device is one GPU that can be given to a session.
type Device struct {
	ID     string // NVML UUID ("GPU-8f6c…"), or "GPU-sim-t4-0" when simulated
	Type   string // short lower-case model name: t4, a100, h100
	Region string
	Name   string // the full product name, for display
}

// DefaultRegion is the region of a single host's devices.
const DefaultRegion = "local"

// DefaultSimulated is the inventory of a host without GPUs.
const DefaultSimulated = "t4:4"

// ParseSimulated reads an inventory such as "t4:4,a100:2" or
// "t4:2@westus3,t4:2@swedennorth" into simulated devices.
func ParseSimulated(spec string) ([]Device, error) {
	var devs []Device
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		typ, count, ok := strings.Cut(part, ":")
		region := DefaultRegion
		if c, r, hasRegion := strings.Cut(count, "@"); hasRegion {
			count, region = c, r
		}
		n, err := strconv.Atoi(count)
		if !ok || err != nil || n < 1 || !validName(typ) || !validName(region) {
			return nil, fmt.Errorf("GPU inventory %q is not TYPE:COUNT[@REGION] (for example t4:4,a100:2)", part)
		}
		key := typ + "@" + region
		if seen[key] {
			return nil, fmt.Errorf("GPU inventory names %s twice; give each type and region once", key)
		}
		seen[key] = true
		for i := range n {
			id := fmt.Sprintf("GPU-sim-%s-%d", typ, i)
			if region != DefaultRegion {
				id = fmt.Sprintf("GPU-sim-%s-%s-%d", typ, region, i)
			}
			devs = append(devs, Device{ID: id, Type: typ, Region: region, Name: "simulated " + typ})
		}
	}
	if len(devs) == 0 {
		return nil, errors.New("GPU inventory is empty; give at least one TYPE:COUNT such as t4:4")
	}
	return devs, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Discover returns the host's NVIDIA GPUs, trying NVML first and then
// nvidia-smi. It returns no devices and no error on a host without any.
func Discover(ctx context.Context, log *slog.Logger) ([]Device, error) {
	devs, err := discoverNVML()
	if err == nil && len(devs) > 0 {
		return devs, nil
	}
	if err != nil {
		log.Debug("nvml discovery unavailable", "err", err)
	}
	return discoverSMI(ctx)
}

// discoverSMI asks nvidia-smi, which is there wherever the driver is.
func discoverSMI(ctx context.Context) ([]Device, error) {
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return nil, nil
	}
	out, err := exec.CommandContext(ctx, path, "--query-gpu=uuid,name", "--format=csv,noheader").Output()
	if err != nil {
		return nil, fmt.Errorf("nvidia-smi: %w", err)
	}
	return parseSMI(string(out)), nil
}

func parseSMI(out string) []Device {
	var devs []Device
	for _, line := range strings.Split(out, "\n") {
		uuid, name, ok := strings.Cut(line, ",")
		if !ok {
			continue
		}
		uuid, name = strings.TrimSpace(uuid), strings.TrimSpace(name)
		devs = append(devs, Device{ID: uuid, Type: TypeOf(name), Region: DefaultRegion, Name: name})
	}
	return devs
}

// TypeOf turns a product name into the short type admins write in policy:
// "Tesla T4" is t4, "NVIDIA A100-SXM4-80GB" is a100, "NVIDIA H100 80GB HBM3"
// is h100, "NVIDIA GeForce RTX 4090" is rtx4090.
func TypeOf(product string) string {
	fields := strings.FieldsFunc(strings.ToLower(product), func(r rune) bool {
		return r == ' ' || r == '-' || r == '_'
	})
	var kept []string
	for _, f := range fields {
		switch f {
		case "nvidia", "tesla", "geforce", "quadro":
			continue
		}
		kept = append(kept, f)
	}
	if len(kept) == 0 {
		return "gpu"
	}
	if (kept[0] == "rtx" || kept[0] == "gtx") && len(kept) > 1 {
		return kept[0] + kept[1]
	}
	return kept[0]
}

// Simulated reports whether the device id is one of the simulated inventory.
func Simulated(id string) bool { return strings.HasPrefix(id, "GPU-sim-") }

// Utilization is the busiest of the devices' current GPU utilisation, in
// percent, read through NVML; ok is false when none could be read
// (simulated devices, or devices NVML on this host does not hold).
func Utilization(ids []string) (percent int, ok bool) {
	for _, id := range ids {
		if Simulated(id) {
			continue
		}
		if u, err := utilization(id); err == nil && (!ok || u > percent) {
			percent, ok = u, true
		}
	}
	return percent, ok
}

// Busy reports whether any of the devices is doing work now, read through
// NVML. Simulated devices are never busy; a device NVML cannot read counts
// as idle, and the error says why.
func Busy(ids []string) (bool, error) {
	var firstErr error
	for _, id := range ids {
		if Simulated(id) {
			continue
		}
		u, err := utilization(id)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if u > 0 {
			return true, nil
		}
	}
	return false, firstErr
}
