//go:build linux && !agentonly

package cli

import (
	"context"
	"errors"

	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/aca"
)

// newACA stands in for aca.New until internal/runtime/aca has it.
func newACA(_ context.Context, _ aca.Config) (runtime.Runtime, func(), error) {
	return nil, nil, errors.New("the aca runtime is not in this build yet; use another runtime")
}
