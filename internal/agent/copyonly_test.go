package agent

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// inUse runs a command on a connection of its own, as a shell in the
// session would, so that file copies on other connections go where they
// ask (see copyPlace).
func (a *testAgent) inUse(t *testing.T) {
	t.Helper()
	if err := newSession(t, a.dial(t)).Run("true"); err != nil {
		t.Fatal(err)
	}
}

// The remote ends of scp and rsync, run on a connection of their own into
// a session with no other use (what `scp f devgpu.PROJECT:` and `rsync -a
// d devgpu.PROJECT:` do in the dedicated shell mode), are refused with
// what to do, and create nothing: their files would vanish with the
// session.
func TestLoneCopyRefused(t *testing.T) {
	t.Parallel()
	for _, command := range []string{"scp -t -- .", "scp -p -t -- up.bin", "rsync --server -logDtpre.iLsfxCIvu . data/"} {
		t.Run(strings.Fields(command)[0], func(t *testing.T) {
			t.Parallel()
			var dir string
			a := startAgent(t, func(c *Config) {
				dir = c.Dir
				c.Env = append(c.Env, "DEVGPU_PROJECT=ml")
			})
			s := newSession(t, a.dial(t))
			var stderr bytes.Buffer
			s.Stderr = &stderr
			s.Stdin = strings.NewReader("C0644 3 up.bin\nhi\n\x00")
			err := s.Run(command)
			if exit := exitError(t, err); exit.ExitStatus() != 1 {
				t.Errorf("%s exited %d, want 1", command, exit.ExitStatus())
			}
			for _, want := range []string{"refused", "devgpu cp", "--workspace", "devgpu.ml"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("%s: stderr %q does not say %q", command, stderr.String(), want)
				}
			}
			for _, name := range []string{"up.bin", "data"} {
				if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
					t.Errorf("%s created %s in the session's directory", command, name)
				}
			}
		})
	}
}

// SFTP alone (what scp does since OpenSSH 9) is refused the same way.
func TestLoneSFTPRefused(t *testing.T) {
	t.Parallel()
	a := startAgent(t, nil)
	ch, reqs, err := a.dial(t).OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	status := make(chan uint32, 1)
	go func() {
		for req := range reqs {
			var m struct{ Status uint32 }
			if req.Type == "exit-status" && ssh.Unmarshal(req.Payload, &m) == nil {
				status <- m.Status
			}
		}
		close(status)
	}()
	if ok, err := ch.SendRequest("subsystem", true, ssh.Marshal(struct{ Name string }{"sftp"})); err != nil || !ok {
		t.Fatalf("subsystem request: %v, %v", ok, err)
	}
	stderr, _ := io.ReadAll(ch.Stderr())
	if st, ok := <-status; !ok || st != 1 || !strings.Contains(string(stderr), "devgpu cp") {
		t.Fatalf("lone sftp: exit %d (%v), stderr %q; want 1 and what to do", st, ok, stderr)
	}
}

// With a persistent workspace, a lone copy lands in it instead.
func TestLoneCopyLandsInWorkspace(t *testing.T) {
	t.Parallel()
	ws := t.TempDir()
	a := startAgent(t, func(c *Config) { c.Env = append(c.Env, "DEVGPU_WORKSPACE="+ws) })
	sc := newSFTP(t, a.dial(t))
	f, err := sc.Create("model.pt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("weights")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "model.pt")); err != nil || string(b) != "weights" {
		t.Fatalf("workspace file: %q, %v", b, err)
	}
}

// A copy goes where it asks when its connection also runs something (VS
// Code, ssh with ControlMaster) or another connection uses the session
// (a shell beside `devgpu cp`).
func TestCopyBesideOtherUse(t *testing.T) {
	t.Parallel()
	t.Run("same connection", func(t *testing.T) {
		t.Parallel()
		var dir string
		a := startAgent(t, func(c *Config) { dir = c.Dir })
		cl := a.dial(t)
		if err := newSession(t, cl).Run("true"); err != nil {
			t.Fatal(err)
		}
		s := newSession(t, cl)
		s.Stdin = strings.NewReader("C0644 3 up.bin\nhi\n\x00")
		if err := s.Run("scp -t -- ."); err != nil {
			t.Fatalf("scp beside a command: %v", err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "up.bin")); err != nil || string(b) != "hi\n" {
			t.Fatalf("copied file: %q, %v", b, err)
		}
	})
	t.Run("other connection", func(t *testing.T) {
		t.Parallel()
		a := startAgent(t, nil)
		a.inUse(t)
		sc := newSFTP(t, a.dial(t))
		if _, err := sc.Getwd(); err != nil {
			t.Fatalf("sftp beside a shell: %v", err)
		}
	})
}

func TestIsCopyCommand(t *testing.T) {
	t.Parallel()
	for cmd, want := range map[string]bool{
		"scp -t -- .": true, "scp -v -r -d -t -- data/": true, "/usr/bin/scp -f -- model.pt": true,
		"rsync --server -logDtpre.iLsfxCIvu . data/": true, "rsync --server --sender -e.LsfxC . x": true,
		"scp": false, "ls -t": false, "rsync -a a b": false, "": false, "bash -c 'scp -t .'": false,
	} {
		if got := isCopyCommand(cmd); got != want {
			t.Errorf("isCopyCommand(%q) = %v, want %v", cmd, got, want)
		}
	}
}
