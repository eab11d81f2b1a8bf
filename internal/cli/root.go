// Package cli implements the devgpu command line, one file per command noun.
// Results go to stdout and everything else to stderr; devgpu's own failures
// exit 255 with one line, otherwise the remote command's status is ours.
package cli

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/version"
	"github.com/devgpu/devgpu/sdk"
)

// exitStatus is returned by commands whose exit status is the remote
// command's; it prints nothing.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// failureExit is devgpu's own failure status, as ssh uses it.
const failureExit = 255

// Execute runs the CLI with args and returns the process exit status.
func Execute(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	var status exitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &status):
		return int(status)
	case printUsageError(os.Stderr, err):
		return failureExit
	default:
		msg := oneLine(err.Error())
		if sdk.IsStatus(err, http.StatusUnauthorized) && os.Getenv("DEVGPU_TOKEN") != "" {
			msg += " (the token is DEVGPU_TOKEN's, which overrides your config's: unset DEVGPU_TOKEN to use the config's token)"
		}
		fmt.Fprintf(os.Stderr, "devgpu: %s\n", msg)
		return failureExit
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "devgpu",
		Short: "On-demand GPU shells under your organisation's policies",
		Long: `devgpu gives you a shell on a dedicated GPU with one command.
Open a shell and a session with its own GPU starts behind it; close it and the
session ends, the GPU is freed and billing stops.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.SetVersionTemplate("devgpu {{.Version}}\n")
	root.AddCommand(
		newServerCmd(), newAgentCmd(), newLoginCmd(), newLogoutCmd(), newWhoamiCmd(),
		newShellCmd(), newRunCmd(), newLogsCmd(), newWaitCmd(), newSessionsCmd(), newGPUsCmd(), newUsageCmd(), newAdminCmd(), newIntegrateCmd(), newDoctorCmd(),
		newCpCmd(), newPortForwardCmd(), newSSHProxyCmd(), newConfigSSHCmd(),
	)
	withUsage(root)
	return root
}
