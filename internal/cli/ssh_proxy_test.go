package cli

import (
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
)

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("ssh is gone") }

// proxyCopy tells which side ended: its source (EOF or an error), or a
// failed write to its destination.
func TestProxyCopySide(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	if !proxyCopy(&out, strings.NewReader("banner")) || out.String() != "banner" {
		t.Fatalf("source at EOF: got %q, want it copied and reported as the source's end", out.String())
	}
	if proxyCopy(failingWriter{}, strings.NewReader("data")) {
		t.Fatal("a failed write was reported as the source's end")
	}
	r, w := io.Pipe()
	w.CloseWithError(errors.New("tunnel broke"))
	if !proxyCopy(io.Discard, r) {
		t.Fatal("a source error was not reported as the source's end")
	}
}

// After the agent hung up first, ssh's own end (its side ending, or its
// SIGHUP) makes it a clean end; the tunnel side's report does not.
func TestSSHExitsAfterAgentHangUp(t *testing.T) {
	t.Parallel()
	done := make(chan bool, 2)
	done <- false // the other copy also saw the tunnel end
	done <- true  // then ssh closed its pipe
	if !sshExits(done, make(chan os.Signal)) {
		t.Fatal("ssh's pipe closing after the agent hung up is not a clean end")
	}
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGHUP
	if !sshExits(make(chan bool), sigs) {
		t.Fatal("ssh's SIGHUP after the agent hung up is not a clean end")
	}
}
