package agent

import (
	"os"
	"slices"
	"strings"
)

// VisibleDevices returns the GPU ids this process may use, as the engine
// gave them: NVIDIA_VISIBLE_DEVICES when it lists ids (the NVIDIA container
// runtime and Kubernetes device plugins set it), else CUDA_VISIBLE_DEVICES,
// else none. The words NVIDIA_VISIBLE_DEVICES also takes ("all", "none",
// "void") name no ids and fall through.
func VisibleDevices() []string {
	return visibleDevices(os.Getenv)
}

func visibleDevices(getenv func(string) string) []string {
	nvidia := strings.TrimSpace(getenv("NVIDIA_VISIBLE_DEVICES"))
	switch nvidia {
	case "", "all", "none", "void":
	default:
		return splitIDs(nvidia)
	}
	return splitIDs(getenv("CUDA_VISIBLE_DEVICES"))
}

// splitIDs splits a comma-separated list, dropping blanks; nil when empty.
func splitIDs(list string) []string {
	var ids []string
	for id := range strings.SplitSeq(list, ",") {
		if id = strings.TrimSpace(id); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// withDevices returns env with CUDA_VISIBLE_DEVICES set to devices when env
// does not set it already: an engine that chose the devices (a Kubernetes
// device plugin) sets NVIDIA_VISIBLE_DEVICES only, and CUDA programs should
// see the same ids.
func withDevices(env []string, devices []string) []string {
	if len(devices) == 0 || slices.ContainsFunc(devices, notDeviceUUID) {
		// Indices (a device plugin's "index" strategy renumbers the
		// container's GPUs from 0) or paths would point CUDA at the wrong
		// GPUs or none: only UUIDs are the same everywhere.
		return env
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "CUDA_VISIBLE_DEVICES=") {
			return env
		}
	}
	return append(env[:len(env):len(env)], "CUDA_VISIBLE_DEVICES="+strings.Join(devices, ","))
}

// isDeviceUUID reports whether id names one GPU the same way in every
// process: a GPU or MIG UUID.
func isDeviceUUID(id string) bool {
	return strings.HasPrefix(id, "GPU-") || strings.HasPrefix(id, "MIG-")
}

func notDeviceUUID(id string) bool { return !isDeviceUUID(id) }
