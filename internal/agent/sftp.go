package agent

import (
	"errors"
	"io"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// sftpMaxTxPacket is the largest read payload the SFTP server returns: four
// times pkg/sftp's default, which `devgpu cp` asks for; OpenSSH's clients
// ask for 32 KiB and get that.
const sftpMaxTxPacket = 128 << 10

// sftpDir is where relative SFTP paths start: the session's working
// directory, else its HOME, else the agent's own working directory.
func (s *server) sftpDir() string {
	if s.cfg.Dir != "" {
		return s.cfg.Dir
	}
	return lookupEnv(s.environ(), "HOME")
}

// serveSFTP serves the "sftp" subsystem on the session's channel until the
// client closes it, then reports exit status 0 (1 after a protocol error),
// as sshd's sftp-server does.
//
// The files are the session's filesystem as its processes see it: the
// agent runs inside the session, so in a container or Pod that is the
// container's root, and with the local runtime (processes on the host) it
// is the host's, with the agent's user and permissions. Nothing outside
// what the session's own shell could reach is reachable.
func (ss *session) serveSFTP() {
	s := ss.srv
	// The server closes its stream when it stops; the channel must stay
	// open until the exit status is sent.
	rw := activityRW{noClose{ss.ch}, &s.activity}
	opts := []sftp.ServerOption{sftp.WithMaxTxPacket(sftpMaxTxPacket)}
	dir := ss.dir
	if dir == "" {
		dir = s.sftpDir()
	}
	if dir != "" {
		opts = append(opts, sftp.WithServerWorkingDirectory(dir))
	}
	status := uint32(0)
	srv, err := sftp.NewServer(rw, opts...)
	if err == nil {
		// The client's EOF ends it, and so does the connection's close
		// (the peer is gone, or Serve stops and closes every connection).
		err = srv.Serve()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		s.log.Debug("sftp ended", "err", err)
		status = 1
	}
	_, _ = ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
	_ = ss.ch.Close()
}

// activityRW counts every chunk a client and a subsystem or forwarded
// connection exchange as user activity, like a shell's input and output.
type activityRW struct {
	rw  io.ReadWriteCloser
	act *activity
}

func (a activityRW) Read(p []byte) (int, error) {
	n, err := a.rw.Read(p)
	if n > 0 {
		a.act.touch()
	}
	return n, err
}

func (a activityRW) Write(p []byte) (int, error) {
	if len(p) > 0 {
		a.act.touch()
	}
	return a.rw.Write(p)
}

func (a activityRW) Close() error { return a.rw.Close() }

// noClose hides a stream's Close from a server that closes what it serves.
type noClose struct{ io.ReadWriter }

func (noClose) Close() error { return nil }
