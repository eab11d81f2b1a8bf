//go:build !linux

package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// The control plane and the session agent run on Linux: they need its
// process groups, namespaces and cgroups. Elsewhere devgpu is the client.
var errLinuxOnly = errors.New("this command runs on Linux only, where devgpu's server and sessions run; on this machine use the client commands (devgpu login URL, devgpu shell)")

func newServerCmd() *cobra.Command {
	return &cobra.Command{Use: "server", Short: "Run the control plane (Linux only)", Hidden: true,
		RunE: func(*cobra.Command, []string) error { return errLinuxOnly }}
}

func newAgentCmd() *cobra.Command {
	return &cobra.Command{Use: "agent", Hidden: true,
		RunE: func(*cobra.Command, []string) error { return errLinuxOnly }}
}
