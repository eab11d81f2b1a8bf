package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/devgpu/devgpu/sdk"
)

// `devgpu shell` on a terminal asks the agent to keep its shell
// (sdk.OpenKeptShell). When the connection drops without the shell having
// ended (a network error, the server going away), it keeps the terminal in
// raw mode, shows "reconnecting", opens a new tunnel to the session with
// capped backoff and resumes the shell: the output it missed is replayed,
// and the keystrokes the agent did not receive (typed before the drop or
// during it) are sent again. It gives up after the detach grace, or at
// once when the session or its shell has ended, or when the server
// refuses the credential (ended, revoked, its user disabled).

const (
	// inputKept bounds the keystrokes kept for a resume: those typed while
	// disconnected, and those the agent may not have received.
	inputKept = 64 << 10
	// resumeFirstWait and resumeMaxWait bound the backoff between attempts.
	resumeFirstWait = 100 * time.Millisecond
	resumeMaxWait   = 2 * time.Second
	// attemptTimeout bounds one attempt (tunnel, SSH handshake, resume).
	attemptTimeout = 10 * time.Second
	// defaultDetachGrace is the server's default detach grace, used when
	// the project's cannot be read.
	defaultDetachGrace = time.Minute
	// keepaliveInterval and keepaliveTimeout detect a connection that died
	// silently (a laptop that slept, a network that drops packets): with no
	// answer to a keepalive in time, the connection counts as dropped.
	keepaliveInterval = 5 * time.Second
	keepaliveTimeout  = 10 * time.Second
)

// inputLog is the keystrokes typed into the shell, the last inputKept of
// them held, at absolute offsets from the shell's first.
type inputLog struct {
	mu   sync.Mutex
	buf  []byte
	end  uint64
	grew chan struct{} // closed and replaced when input arrives
}

func newInputLog() *inputLog { return &inputLog{grew: make(chan struct{})} }

// readFrom appends what r delivers until it fails.
func (l *inputLog) readFrom(r io.Reader) {
	b := make([]byte, 4096)
	for {
		n, err := r.Read(b)
		if n > 0 {
			l.append(b[:n])
		}
		if err != nil {
			return
		}
	}
}

func (l *inputLog) append(p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if over := len(l.buf) - inputKept; over > 0 {
		l.buf = append(l.buf[:0], l.buf[over:]...)
	}
	l.end += uint64(len(p))
	close(l.grew)
	l.grew = make(chan struct{})
}

// next waits until there is input from offset from on, or stop closes
// (false), and returns it with the offset after it. Input older than what
// is kept is skipped.
func (l *inputLog) next(from uint64, stop <-chan struct{}) ([]byte, uint64, bool) {
	for {
		l.mu.Lock()
		if from < l.end {
			oldest := l.end - uint64(len(l.buf))
			from = max(from, oldest)
			data := append([]byte(nil), l.buf[from-oldest:]...)
			end := l.end
			l.mu.Unlock()
			return data, end, true
		}
		grew := l.grew
		l.mu.Unlock()
		select {
		case <-grew:
		case <-stop:
			return nil, from, false
		}
	}
}

// reconnectingShell is a terminal shell that survives a dropped connection.
type reconnectingShell struct {
	conn  *sessionConn // its Client and tunnel are replaced on each resume
	sess  sdk.Session
	fd    int
	input *inputLog
	grace atomic.Int64 // the detach grace, as the project says (defaultDetachGrace until known)
	seen  uint64       // output bytes received: the offset a resume asks for
	lost  uint64       // output bytes the agent no longer had at the last resume

	mu    sync.Mutex
	shell *sdk.KeptShell // the channel attached now
}

// runKeptShell runs shell, already started, until it ends or the
// connection cannot be had back. The terminal is in raw mode.
func runKeptShell(conn *sessionConn, sess sdk.Session, shell *sdk.KeptShell, fd int) error {
	r := &reconnectingShell{conn: conn, sess: sess, fd: fd, input: newInputLog(), shell: shell}
	// The session's own grace, fixed when it was created, is what the
	// server waits; a server that does not say it is asked for the
	// project's, in the background (a reconnect before that answer waits
	// the default).
	if g := time.Duration(sess.DetachGrace); g > 0 {
		r.grace.Store(int64(g))
	} else {
		r.grace.Store(int64(defaultDetachGrace))
		go r.learnGrace()
	}
	go r.input.readFrom(os.Stdin) // blocks in Read past the end; the process exits
	stop := watchResize(r.resize)
	defer stop()
	conn.command = true
	var inputFrom uint64
	for {
		if exit := r.attached(inputFrom); exit != nil {
			conn.exited = true
			return shellExitError(exit)
		}
		answer, err := r.reconnect()
		if err != nil {
			return err
		}
		inputFrom = answer.InputReceived
	}
}

// learnGrace reads the project's detach grace, how long the session waits
// for a reconnect.
func (r *reconnectingShell) learnGrace() {
	ctx, cancel := context.WithTimeout(context.Background(), endWait)
	defer cancel()
	p, err := r.conn.api.Project(ctx, r.sess.Project)
	if err != nil {
		return
	}
	if s, ok := p.Effective["detach_grace"].Value.(string); ok {
		if d, err := time.ParseDuration(s); err == nil {
			r.grace.Store(int64(d))
		}
	}
}

// attached carries the shell over its channel until the channel closes,
// sending input from offset inputFrom on, and returns the shell's exit;
// nil when the channel closed without one (the connection dropped).
func (r *reconnectingShell) attached(inputFrom uint64) *sdk.ShellExit {
	r.mu.Lock()
	shell := r.shell
	r.mu.Unlock()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for cursor := inputFrom; ; {
			data, next, ok := r.input.next(cursor, stop)
			if !ok {
				return
			}
			if _, err := shell.Write(data); err != nil {
				return
			}
			cursor = next
		}
	})
	wg.Go(func() { _, _ = io.Copy(os.Stderr, shell.Stderr()) })
	wg.Go(func() { r.keepalive(stop) })
	buf := make([]byte, 32<<10)
	for {
		n, err := shell.Read(buf)
		if n > 0 {
			_, _ = os.Stdout.Write(buf[:n])
			r.seen += uint64(n)
		}
		if err != nil {
			break
		}
	}
	exit := shell.Wait()
	close(stop)
	if exit == nil {
		// Unblocks writes to a connection that died silently.
		_ = r.conn.Client.Close()
	}
	wg.Wait()
	return exit
}

// keepalive closes the connection when it stops answering, so that a
// silent drop is noticed.
func (r *reconnectingShell) keepalive(stop <-chan struct{}) {
	client := r.conn.Client
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		answered := make(chan struct{})
		go func() {
			defer close(answered)
			// The agent refuses it; that it answers is what counts.
			_, _, _ = client.SendRequest("keepalive@devgpu.dev", true, nil)
		}()
		select {
		case <-answered:
		case <-stop:
			return
		case <-time.After(keepaliveTimeout):
			_ = client.Close()
			return
		}
	}
}

func (r *reconnectingShell) resize() {
	r.mu.Lock()
	shell := r.shell
	r.mu.Unlock()
	if w, h, err := term.GetSize(r.fd); err == nil {
		_ = shell.WindowChange(sdk.TerminalSize{Rows: h, Columns: w})
	}
}

// errSessionGone: the session has ended, or its shell did.
var errSessionGone = errors.New("the session or its shell has ended")

// reconnect opens a new tunnel to the session and resumes the shell, with
// capped backoff, until the detach grace has passed.
func (r *reconnectingShell) reconnect() (sdk.ResumeAnswer, error) {
	started := time.Now()
	grace := time.Duration(r.grace.Load())
	deadline := started.Add(grace)
	status := newStatusLine()
	status.ownLine, status.since = true, started
	status.set("reconnecting to session " + r.sess.ID)
	backoff := resumeFirstWait
	for {
		attempt := time.Now().Add(attemptTimeout)
		if attempt.After(deadline) {
			attempt = deadline
		}
		answer, err := r.resume(attempt)
		if err == nil {
			status.done()
			if r.lost > 0 {
				fmt.Fprintf(os.Stderr, "devgpu: %d bytes of the shell's output were lost while disconnected\r\n", r.lost)
				r.lost = 0
			}
			return answer, nil
		}
		if refused(err) {
			status.done()
			return answer, fmt.Errorf("lost the connection to session %s, and the server refuses to reconnect it: %w", r.sess.ID, err)
		}
		wait := time.Until(deadline)
		if errors.Is(err, errSessionGone) || wait <= 0 {
			status.done()
			return answer, r.giveUp(grace, err)
		}
		time.Sleep(min(backoff, wait))
		backoff = min(2*backoff, resumeMaxWait)
	}
}

// refused reports whether err is the server refusing the credential (401)
// or the access (403), after the client's Renew had its chance to renew
// an expired single sign-on, or a single sign-on the server will not
// renew: the credential was ended or revoked, or the user disabled, and
// no later attempt would be let in.
func refused(err error) bool {
	var ended *ssoEndedError
	return errors.As(err, &ended) || sdk.IsStatus(err, http.StatusUnauthorized) || sdk.IsStatus(err, http.StatusForbidden)
}

// resume makes one attempt, by deadline.
func (r *reconnectingShell) resume(deadline time.Time) (sdk.ResumeAnswer, error) {
	var answer sdk.ResumeAnswer
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	api, id := r.conn.api, r.sess.ID
	tunnel, err := api.Connect(ctx, id)
	if sdk.IsStatus(err, http.StatusConflict) || sdk.IsStatus(err, http.StatusNotFound) {
		return answer, fmt.Errorf("%w: %w", errSessionGone, err)
	}
	if err != nil {
		return answer, err
	}
	// A deadline that passes closes the tunnel, which ends what blocks on it.
	_ = tunnel.SetDeadline(deadline)
	sshConn, chans, reqs, err := ssh.NewClientConn(tunnel, "devgpu", &ssh.ClientConfig{
		User:            r.sess.User,
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), // as in openSession
	})
	if err != nil {
		tunnel.Close()
		return answer, err
	}
	client := ssh.NewClient(sshConn, chans, reqs)
	shell, answer, err := sdk.ResumeShell(client, r.shell.Token, r.seen)
	if err != nil {
		client.Close()
		if errors.Is(err, sdk.ErrShellGone) {
			err = fmt.Errorf("%w: %w", errSessionGone, err)
		}
		return answer, err
	}
	_ = tunnel.SetDeadline(time.Time{})
	if answer.Oldest > r.seen {
		r.lost = answer.Oldest - r.seen
		r.seen = answer.Oldest
	}
	old := r.conn.Client
	r.conn.Client, r.conn.tunnel = client, tunnel
	r.mu.Lock()
	r.shell = shell
	r.mu.Unlock()
	_ = old.Close()
	r.resize() // the terminal may have changed size meanwhile
	return answer, nil
}

// giveUp says why the shell could not be resumed, in one line.
func (r *reconnectingShell) giveUp(grace time.Duration, last error) error {
	id := r.sess.ID
	ctx, cancel := context.WithTimeout(context.Background(), endWait)
	defer cancel()
	lost := fmt.Sprintf("lost the connection to session %s and could not reconnect within %s", id, grace)
	if errors.Is(last, sdk.ErrShellGone) {
		lost = fmt.Sprintf("lost the connection to session %s, and its shell did not survive it", id)
	}
	s, err := r.conn.api.Session(ctx, id)
	switch {
	case err == nil && (!s.Active() || s.State == sdk.StateStopping) && s.EndReason != "" && s.EndReason != sdk.ReasonDetached:
		// Ended on purpose (stopped, idle, budget...) or lost: say why, as
		// explainEnd does for a shell that is not kept.
		return errors.New(endMessage(s))
	case err == nil && !s.Active():
		return fmt.Errorf("%s; the session has ended", lost)
	case err == nil && s.State == sdk.StateRunning:
		return fmt.Errorf("%s; the session is still running: devgpu shell --attach %s", lost, id)
	case err == nil:
		return fmt.Errorf("%s; the session is %s", lost, s.State)
	}
	return fmt.Errorf("%s; the server does not answer; if the session still runs, reattach with devgpu shell --attach %s", lost, id)
}

// shellExitError maps a kept shell's exit onto devgpu's exit status as
// exitFrom does an ssh.Session's: a signal is 128 plus its number.
func shellExitError(exit *sdk.ShellExit) error {
	if exit.Signal != "" {
		return exitStatus(128 + signalNumbers[exit.Signal])
	}
	if exit.Status == 0 {
		return nil
	}
	return exitStatus(int(exit.Status))
}

// signalNumbers are the signals' numbers on Linux, as x/crypto/ssh maps
// them for an ssh.ExitError.
var signalNumbers = map[string]int{
	"ABRT": 6, "ALRM": 14, "FPE": 8, "HUP": 1, "ILL": 4, "INT": 2, "KILL": 9,
	"PIPE": 13, "QUIT": 3, "SEGV": 11, "TERM": 15, "USR1": 10, "USR2": 12,
}
