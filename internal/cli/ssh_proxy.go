package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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
closes the session ends, if it was the session's last connection. A connection
that only copies files (scp, rsync, sftp) into a session nothing else uses
lands in the project's persistent workspace, or is refused without one: its
files would end with the session.`,
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
	// Either side's end (ssh closing its end, or the session's agent
	// closing ours) ends the connection; which side ended decides whether
	// to leave the session (sdk.Tunnel.Leave) or to let the server count
	// the client as vanished.
	done := make(chan bool, 2)                      // true: ssh's side ended
	go func() { done <- proxyCopy(tunnel, in) }()   // stdin ended: ssh's side
	go func() { done <- !proxyCopy(out, tunnel) }() // stdout failed: ssh's side
	// ssh sends its ProxyCommand SIGHUP as it exits, which is a normal end
	// too; a write to an ssh that is gone must fail, not kill us.
	signal.Ignore(syscall.SIGPIPE)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)
	var sshEnded bool
	select {
	case sshEnded = <-done:
	case <-sigs:
		sshEnded = true
	}
	if !sshEnded && tunnel.AgentEnded() {
		sshEnded = sshExits(done, sigs)
	}
	// Leave, which returns once the server has recorded it, so that the
	// session has ended when ssh returns; or close, and wait for the
	// server to record the detach.
	wctx, cancel := context.WithTimeout(context.Background(), detachWait)
	defer cancel()
	if sshEnded {
		_ = client.CloseTunnel(wctx, tunnel, nil)
	} else {
		_ = tunnel.Close()
		_, _ = client.WaitDetached(wctx, tunnel)
	}
	return nil
}

// sshExitWait bounds how long ssh-proxy waits, after the agent hung up
// first, for ssh to end on its own.
const sshExitWait = 2 * time.Second

// sshExits tells, once the agent's side ended first, whether ssh ended the
// connection. An agent hangs up after OpenSSH's disconnect message, while
// ssh exits by itself and its end reaches us a moment later; an agent that
// died leaves ssh waiting on us, so ssh does not end within sshExitWait.
func sshExits(done <-chan bool, sigs <-chan os.Signal) bool {
	t := time.NewTimer(sshExitWait)
	defer t.Stop()
	for {
		select {
		case sshSide := <-done:
			if sshSide {
				return true
			}
		case <-sigs:
			return true
		case <-t.C:
			return false
		}
	}
}

// proxyCopy copies src to dst until one side ends, and reports whether it
// was src (its EOF or error) rather than a failed write to dst.
func proxyCopy(dst io.Writer, src io.Reader) (srcEnded bool) {
	buf := make([]byte, proxyBufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false
			}
		}
		if err != nil {
			return true
		}
	}
}
