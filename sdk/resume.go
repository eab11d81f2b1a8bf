package sdk

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/crypto/ssh"
)

// Shells that outlive their connection (the agent's side is in
// internal/agent/keep.go). A client asks for one with KeepRequest on a
// "session" channel after "pty-req" and before "shell" or "exec"; the agent
// answers with a KeepRequest of its own on the channel, carrying KeepAnswer,
// just before its success reply (SSH's channel replies carry no data). A
// later connection opens a new "session" channel and sends ResumeRequest
// with ResumeAsk; the agent answers with a ResumeRequest carrying
// ResumeAnswer just before its success reply, replays the output from the
// client's offset and attaches the shell to the new channel.
const (
	KeepRequest   = "keep@devgpu.dev"
	ResumeRequest = "resume@devgpu.dev"
)

type (
	// KeepAnswer names a kept shell: a random token (128 bits or more)
	// that a later connection resumes it with.
	KeepAnswer struct{ Token string }
	// ResumeAsk resumes the shell Token, replaying its output from Offset,
	// the count of output bytes the client has seen.
	ResumeAsk struct {
		Token  string
		Offset uint64
	}
	// ResumeAnswer says how many input bytes the shell has received (the
	// client sends what follows) and the oldest output offset still
	// buffered: the replay starts at the larger of it and the client's
	// offset, and the bytes between are lost.
	ResumeAnswer struct{ InputReceived, Oldest uint64 }
)

var (
	// ErrKeepRefused: the agent keeps no shell for this channel (an agent
	// that predates kept shells, or one that keeps as many as it may).
	ErrKeepRefused = errors.New("the session's agent does not keep this shell across connections")
	// ErrShellGone: the agent no longer has the shell to resume (it ended
	// and its exit was delivered, its keep limit passed, or the agent
	// restarted).
	ErrShellGone = errors.New("the session's agent no longer has the shell")
)

// ShellExit is how a shell ended: Status, or the Signal (without "SIG")
// that killed it.
type ShellExit struct {
	Status uint32
	Signal string
}

// KeptShell is the client's side of one channel attached to a kept shell.
// Read returns the shell's output, Write sends it input; Wait returns once
// the channel has closed, with the shell's exit when it reported one.
type KeptShell struct {
	Token string
	ch    ssh.Channel
	reqs  <-chan *ssh.Request

	done chan struct{} // closed when reqs has closed
	mu   sync.Mutex
	exit *ShellExit
}

// TerminalSize is a terminal's size in characters.
type TerminalSize struct{ Rows, Columns int }

// OpenKeptShell opens a channel on c with a terminal of the given type,
// size and modes, asks the agent to keep it (ErrKeepRefused when it will
// not; the channel is then closed), and starts the shell.
func OpenKeptShell(c ssh.Conn, termType string, size TerminalSize, modes ssh.TerminalModes) (*KeptShell, error) {
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		return nil, fmt.Errorf("open a shell channel: %w", err)
	}
	k := &KeptShell{ch: ch, reqs: reqs, done: make(chan struct{})}
	ok, err := ch.SendRequest("pty-req", true, ssh.Marshal(ptyRequest{
		Term: termType, Columns: uint32(size.Columns), Rows: uint32(size.Rows), Modes: encodeModes(modes),
	}))
	if err == nil && !ok {
		err = errors.New("the agent refused the terminal")
	}
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("request a terminal: %w", err)
	}
	var answer KeepAnswer
	if err := k.ask(KeepRequest, nil, &answer); err != nil {
		ch.Close()
		return nil, err
	}
	k.Token = answer.Token
	if ok, err := ch.SendRequest("shell", true, nil); err != nil || !ok {
		ch.Close()
		return nil, fmt.Errorf("start the shell: %w", errors.Join(err, errors.New("the agent refused it")))
	}
	go k.serveRequests()
	return k, nil
}

// ResumeShell opens a channel on c and attaches it to the kept shell
// token, asking for its output from offset on (ErrShellGone when the agent
// does not have it). The channel that was attached before is closed by the
// agent.
func ResumeShell(c ssh.Conn, token string, offset uint64) (*KeptShell, ResumeAnswer, error) {
	var answer ResumeAnswer
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		return nil, answer, fmt.Errorf("open a shell channel: %w", err)
	}
	k := &KeptShell{Token: token, ch: ch, reqs: reqs, done: make(chan struct{})}
	if err := k.ask(ResumeRequest, ssh.Marshal(ResumeAsk{token, offset}), &answer); err != nil {
		ch.Close()
		if errors.Is(err, ErrKeepRefused) {
			err = ErrShellGone
		}
		return nil, answer, err
	}
	go k.serveRequests()
	return k, answer, nil
}

// ask sends the request name and reads the agent's answer, the request of
// the same name that precedes its success reply, into answer.
func (k *KeptShell) ask(name string, payload []byte, answer any) error {
	ok, err := k.ch.SendRequest(name, true, payload)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if !ok {
		return ErrKeepRefused
	}
	// The answer came before the reply on the same connection, so it is
	// queued already.
	select {
	case req, open := <-k.reqs:
		if open && req.Type == name && ssh.Unmarshal(req.Payload, answer) == nil {
			return nil
		}
	default:
	}
	return fmt.Errorf("%s: the agent accepted it without an answer", name)
}

// serveRequests records the exit that the agent reports and refuses the
// rest, until the channel closes.
func (k *KeptShell) serveRequests() {
	defer close(k.done)
	for req := range k.reqs {
		var exit *ShellExit
		switch req.Type {
		case "exit-status":
			var m struct{ Status uint32 }
			if ssh.Unmarshal(req.Payload, &m) == nil {
				exit = &ShellExit{Status: m.Status}
			}
		case "exit-signal":
			var m struct {
				Signal     string
				CoreDumped bool
				Error      string
				Lang       string
			}
			if ssh.Unmarshal(req.Payload, &m) == nil {
				exit = &ShellExit{Signal: m.Signal}
			}
		}
		if exit != nil {
			k.mu.Lock()
			k.exit = exit
			k.mu.Unlock()
		}
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
	}
}

// Read reads the shell's output.
func (k *KeptShell) Read(p []byte) (int, error) { return k.ch.Read(p) }

// Write sends input to the shell.
func (k *KeptShell) Write(p []byte) (int, error) { return k.ch.Write(p) }

// Stderr is the channel's extended data, which a terminal leaves empty.
func (k *KeptShell) Stderr() io.Reader { return k.ch.Stderr() }

// WindowChange tells the shell's terminal its new size.
func (k *KeptShell) WindowChange(size TerminalSize) error {
	_, err := k.ch.SendRequest("window-change", false, ssh.Marshal(windowChange{Columns: uint32(size.Columns), Rows: uint32(size.Rows)}))
	return err
}

// Wait waits until the channel has closed and returns the shell's exit,
// nil when the channel closed without one (the connection dropped, or
// another channel took the shell over).
func (k *KeptShell) Wait() *ShellExit {
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.exit
}

// Signal sends the shell's process group the signal, as RFC 4254 6.9's
// "signal" request, and waits for the agent's answer: an error when it
// did not deliver it (the shell has exited, or the name is unknown).
func (k *KeptShell) Signal(sig ssh.Signal) error {
	ok, err := k.ch.SendRequest("signal", true, ssh.Marshal(struct{ Name string }{string(sig)}))
	if err == nil && !ok {
		err = fmt.Errorf("the agent did not deliver SIG%s to the shell", sig)
	}
	return err
}

// Close closes the channel; the agent keeps the shell.
func (k *KeptShell) Close() error { return k.ch.Close() }

// Payloads of "session" channel requests (RFC 4254 section 6).
type (
	ptyRequest struct {
		Term                         string
		Columns, Rows, Width, Height uint32
		Modes                        string
	}
	windowChange struct{ Columns, Rows, Width, Height uint32 }
)

// encodeModes encodes terminal modes as RFC 4254 section 8 says: opcode,
// uint32 value, ..., TTY_OP_END.
func encodeModes(modes ssh.TerminalModes) string {
	var b []byte
	for op, v := range modes {
		b = append(b, op, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return string(append(b, 0))
}
