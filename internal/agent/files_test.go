package agent

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

func newSFTP(t *testing.T, cl *ssh.Client, opts ...sftp.ClientOption) *sftp.Client {
	t.Helper()
	sc, err := sftp.NewClient(cl, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc
}

// SFTP works on the session's filesystem, relative paths from its working
// directory, and counts as activity.
func TestSFTP(t *testing.T) {
	t.Parallel()
	var dir string
	a := startAgent(t, func(c *Config) { dir = c.Dir })
	a.inUse(t)
	ctl := a.control(t)
	before := lastActivity(t, ctl)
	time.Sleep(2 * time.Millisecond)

	sc := newSFTP(t, a.dial(t), sftp.UseConcurrentWrites(true), sftp.MaxPacketUnchecked(sftpMaxTxPacket))
	if wd, err := sc.Getwd(); err != nil || wd != dir {
		t.Fatalf("Getwd = %q, %v; want %q", wd, err, dir)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	f, err := sc.Create("up.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sc.PosixRename("up.bin", "final.bin"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "final.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("uploaded file: %d bytes, %v; want %d", len(got), err, len(data))
	}

	r, err := sc.Open("final.bin")
	if err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	if _, err := r.WriteTo(&back); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if !bytes.Equal(back.Bytes(), data) {
		t.Fatalf("downloaded %d bytes, want %d equal ones", back.Len(), len(data))
	}

	if _, err := sc.Stat("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(missing) = %v, want not exist", err)
	}
	if after := lastActivity(t, ctl); !after.After(before) {
		t.Errorf("activity %v not after %v", after, before)
	}
}

// The subsystem exits 0 when the client closes it, and a channel that runs
// it takes no shell.
func TestSFTPExclusive(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	a.inUse(t)
	s := newSession(t, a.dial(t))
	if err := s.RequestSubsystem("sftp"); err != nil {
		t.Fatal(err)
	}
	if err := s.Shell(); err == nil {
		t.Error("shell accepted on an sftp channel")
	}
	if err := s.Start("true"); err == nil {
		t.Error("exec accepted on an sftp channel")
	}
}

// direct-tcpip dials from the agent (inside the session), carries both
// ways with half-close, and counts as activity; a closed port is refused.
func TestDirectTCPIP(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ctl := a.control(t)
	cl := a.dial(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from the session")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	before := lastActivity(t, ctl)
	time.Sleep(2 * time.Millisecond)
	hc := &http.Client{Transport: &http.Transport{Dial: func(network, addr string) (net.Conn, error) {
		return cl.Dial("tcp", ln.Addr().String())
	}}}
	defer hc.CloseIdleConnections()
	for range 3 {
		resp, err := hc.Get("http://session/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello from the session" {
			t.Fatalf("body %q", b)
		}
	}
	if after := lastActivity(t, ctl); !after.After(before) {
		t.Errorf("activity %v not after %v", after, before)
	}

	// Half-close: the client's EOF reaches the server, whose reply still
	// comes back.
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("got "), b...))
	}()
	c, err := cl.Dial("tcp", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("ping"))
	_ = c.(interface{ CloseWrite() error }).CloseWrite()
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "got ping" {
		t.Errorf("echo = %q, want %q", b, "got ping")
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	_, err = cl.Dial("tcp", addr)
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.ConnectionFailed {
		t.Errorf("dial to a closed port: %v, want connection failed", err)
	}
}
