//go:build linux && agentonly

package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
)

// kubeRuntime: the static agent build leaves the Kubernetes client out.
func kubeRuntime(_ context.Context, name string, _ *kubeBackendConfig, _ string, _ *link.Hub, _ string, _ *slog.Logger) (runtime.Runtime, func(), error) {
	return nil, nil, fmt.Errorf("backend %s: this devgpu binary was built with -tags agentonly, to run inside sessions, and has no kube runtime; run the server from the full devgpu binary (bin/devgpu)", name)
}
