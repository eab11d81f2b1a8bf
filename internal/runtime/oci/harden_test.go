package oci

import (
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/devgpu/devgpu/internal/testutil"
)

// hostSocket listens on a unix socket at path, non-blocking, so that
// accepted reports at once whether anyone connected.
func hostSocket(t *testing.T, path string) (accepted func() bool) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	return func() bool {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err == nil {
			unix.Close(nfd)
			return true
		}
		if err != unix.EAGAIN {
			t.Fatalf("accept on the host socket: %v", err)
		}
		return false
	}
}

// A session that replaces every unix socket it can see (the agent's
// socket included, wherever it is) with a link to another socket of the
// host cannot make the control plane dial that socket: the host dials only
// the socket it made, in a directory no session reaches.
func TestSessionCannotRedirectAgentSocket(t *testing.T) {
	requireRunc(t)
	t.Parallel()
	rt := newRuntime(t, testutil.ShortTempDir(t))
	s := start(t, rt, "redirect")
	victim := filepath.Join(testutil.ShortTempDir(t), "victim.sock")
	accepted := hostSocket(t, victim)

	// The old layout's socket, and any other socket the session can see.
	attack := `for s in /.devgpu/run/agent.sock $(find / \( -path /proc -o -path /sys \) -prune -o -type s -print 2>/dev/null); do
		rm -f "$s" && ln -s ` + victim + ` "$s" && echo "replaced $s"
	done; true`
	t.Logf("attack: %s", strings.TrimSpace(execOut(t, rt, s, attack)))

	ctx := testutil.Context(t, testutil.WaitShort)
	conn, err := rt.Connect(ctx, s.SessionID)
	if err == nil {
		_, _ = conn.Write([]byte("bytes a user sent to the session\n"))
		conn.Close()
	}
	if accepted() {
		t.Fatal("the runtime dialled a host socket that the session linked in place of its agent's")
	}
	// The session is still reachable, through its real agent.
	if got := execOut(t, rt, s, "echo still here"); got != "still here\n" {
		t.Fatalf("after the attack the agent answers %q", got)
	}
}
