package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/sdk"
)

// sshHostPrefix starts the host names that `devgpu config-ssh` writes:
// devgpu.PROJECT.
const sshHostPrefix = "devgpu."

// proxyBufSize is the chunk the proxy copies: a WebSocket message per
// chunk, so large ones for bulk transfers.
const proxyBufSize = 256 << 10

func newSSHProxyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-proxy devgpu.PROJECT",
		Short: "Carry an OpenSSH connection to a new GPU session (ProxyCommand)",
		Long: `Start a session in PROJECT (or join one, under the project's shared and
spillover shell modes), then carry OpenSSH's byte stream between stdin/stdout
and the session's agent through the server's authenticated tunnel. It is the
ProxyCommand that ` + "`devgpu config-ssh`" + ` writes; the agent accepts SSH
user authentication "none", so no keys need managing. When the SSH connection
closes the session ends, if it was the session's last connection.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			project, ok := strings.CutPrefix(args[0], sshHostPrefix)
			if !ok || project == "" {
				return fmt.Errorf("host %q is not devgpu.PROJECT; run `devgpu config-ssh` for the hosts you may use", args[0])
			}
			return sshProxy(cmd.Context(), project, os.Stdin, os.Stdout)
		},
	}
}

func sshProxy(ctx context.Context, project string, in io.Reader, out io.Writer) error {
	client, cfg, err := newClient()
	if err != nil {
		return err
	}
	// As openSession: a session chosen to join can end just before we
	// connect; then ask again.
	f := sessionFlags{project: project}
	var tunnel *sdk.Tunnel
	for attempt := 0; ; attempt++ {
		sess, err := findSession(ctx, client, cfg, f)
		if err != nil {
			return err
		}
		tunnel, err = client.Connect(ctx, sess.ID)
		if err == nil {
			break
		}
		if attempt == 2 || !sdk.IsStatus(err, http.StatusConflict) {
			return err
		}
	}
	// Either side's EOF (ssh closing its end, or the session's agent
	// closing ours) ends the connection.
	done := make(chan struct{}, 2)
	var once sync.Once
	copyTo := func(dst io.Writer, src io.Reader) {
		buf := make([]byte, proxyBufSize)
		_, _ = io.CopyBuffer(dst, src, buf)
		once.Do(func() { done <- struct{}{} })
	}
	go copyTo(tunnel, in)
	go copyTo(out, tunnel)
	// ssh sends its ProxyCommand SIGHUP as it exits, which is a normal end
	// too; a write to an ssh that is gone must fail, not kill us.
	signal.Ignore(syscall.SIGPIPE)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)
	select {
	case <-done:
	case <-sigs:
	}
	// Close, and wait until the server has recorded it, so that the session
	// has ended when ssh returns. No Leave: which side ended first says
	// nothing here (the agent hangs up after ssh's disconnect as it does
	// when it dies), so the server tells a clean end by the agent's health.
	wctx, cancel := context.WithTimeout(context.Background(), detachWait)
	defer cancel()
	_ = tunnel.Close()
	_, _ = client.WaitDetached(wctx, tunnel)
	return nil
}
