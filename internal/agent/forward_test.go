package agent

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestForwardToOwnLocalEnd forwards a local port to the same port on the
// same network, as `devgpu port-forward ID 8888:8888` and `ssh -L
// 8888:127.0.0.1:8888` do on the local runtime: the agent's dial reaches
// the client's own listener. The agent must refuse that channel at once,
// naming the cause, instead of looping connection after connection.
func TestForwardToOwnLocalEnd(t *testing.T) {
	a := startAgent(t, nil)
	cl := a.dial(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr)
	refusals := make(chan error, 16)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				// As the CLI and OpenSSH do: the originator is the
				// accepted connection's peer.
				ch, err := cl.DialTCP("tcp", c.RemoteAddr().(*net.TCPAddr), port)
				if err != nil {
					refusals <- err
					return
				}
				defer ch.Close()
				go func() { _, _ = io.Copy(ch, c) }()
				_, _ = io.Copy(c, ch)
			})
		}
	})

	user, err := net.Dial("tcp", port.String())
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	_ = user.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := user.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the looping connection was not closed: read returned %v", err)
	}
	select {
	case err := <-refusals:
		var oc *ssh.OpenChannelError
		if !errors.As(err, &oc) || oc.Reason != ssh.ConnectionFailed || !strings.Contains(oc.Message, "own local port") {
			t.Fatalf("the looped channel was refused with %v, want a connect failure naming the forwarding's own local port", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the looped channel was never refused")
	}
}
