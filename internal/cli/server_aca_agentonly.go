//go:build linux && agentonly

package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/runtime"
)

// acaRuntime: the static agent build leaves the Azure SDK out.
func acaRuntime(_ context.Context, name string, _ *acaBackendConfig, _ string, _ *link.Hub, _ string, _ *slog.Logger) (runtime.Runtime, func(), error) {
	return nil, nil, fmt.Errorf("backend %s: this devgpu binary was built with -tags agentonly, to run inside sessions, and has no aca runtime; run the server from the full devgpu binary (bin/devgpu)", name)
}
