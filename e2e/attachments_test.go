package e2e

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// A run that ends while its output still streams frees its one GPU by
// the time devgpu returns, every time: the next run, without --wait, gets
// the GPU at once. (A close lost on the way would hold the GPU for the
// detach grace, and the next run would be refused.)
func TestRunsFreeTheirGPUAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	for i := range 12 {
		r := e.cli("run", "--", "head -c 3000000 /dev/zero; exit 7")
		if r.code != 7 || len(r.stdout) != 3000000 {
			t.Fatalf("run %d: exit %d with %d bytes of output, want 7 with 3000000 (stderr %q)", i, r.code, len(r.stdout), r.stderr)
		}
	}
	for _, s := range e.sessions() {
		if s.State != sdk.StateEnded || s.EndReason != sdk.ReasonClosed {
			t.Errorf("session %s: %s (%s), want ended (closed)", s.ID, s.State, s.EndReason)
		}
	}
}

// OpenSSH through ssh-proxy keeps ssh's semantics: each connection that
// ssh ends closes its session at once (the next one, on the one GPU, is not
// refused); an agent that dies under ssh ends the session as lost, not
// closed, and ssh fails.
func TestOpenSSHCloseAndAgentDeath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "t4:1")
	cfg := e.sshConfig()
	for i := range 8 {
		if out := e.command("ssh", "-F", cfg, "devgpu.default", "echo round-"+strconv.Itoa(i)); strings.TrimSpace(out) != "round-"+strconv.Itoa(i) {
			t.Fatalf("ssh round %d printed %q", i, out)
		}
	}
	for _, s := range e.sessions() {
		if s.State != sdk.StateEnded || s.EndReason != sdk.ReasonClosed {
			t.Errorf("session %s after its ssh returned: %s (%s), want ended (closed)", s.ID, s.State, s.EndReason)
		}
	}

	ssh := e.startBackground(io.Discard, "ssh", "-F", cfg, "devgpu.default", "exec sleep 100000")
	var id string
	testutil.Eventually(t, testutil.WaitMedium, "the ssh session to run", func() bool {
		if r := e.running(); len(r) == 1 {
			id = r[0].ID
			return true
		}
		return false
	})
	var agent int
	testutil.Eventually(t, testutil.WaitShort, "the session's agent to write its pid", func() bool {
		b, err := os.ReadFile(filepath.Join(e.dir, "data", "sessions", id, "agent.pid"))
		agent, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && agent > 0
	})
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s := e.waitSession(id, testutil.WaitMedium, "to end", func(s sdk.Session) bool { return s.State == sdk.StateEnded })
	if s.EndReason != sdk.ReasonLost {
		t.Fatalf("session whose agent died under ssh ended %q, want lost", s.EndReason)
	}
	var exit *exec.ExitError
	if err := e.waitExit(ssh); !errors.As(err, &exit) || exit.ExitCode() != 255 {
		t.Fatalf("ssh whose session's agent died: %v, want exit status 255", err)
	}
}
