package agent

import (
	"context"
	"crypto/rand"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/devgpu/devgpu/sdk"
)

// Kept shells outlive their connection, as mosh's and Coder's reconnecting
// terminals do, on top of SSH. A client that asks for one (sdk.KeepRequest,
// before "shell" or "exec", with a pty) gets a random token; when its
// channel or connection drops, the agent keeps the PTY and its processes
// instead of hanging up, and keeps the last keptOutputSize bytes of output
// (the shell never blocks on a client that is gone). A later connection
// resumes it (sdk.ResumeRequest): it learns how much input the shell got,
// gets the output it missed, and the PTY is attached to its channel. One
// channel at a time: a second resume takes the shell over and the first
// channel is closed. A shell left detached for the keep limit is hung up
// as today's shells are at once; so is every kept shell when Serve stops.
// Clients that do not ask (OpenSSH) keep ssh's semantics.

const (
	// keptOutputSize is how much of a kept shell's recent output the agent
	// holds for a client that reconnects: a few screens of a busy build log.
	keptOutputSize = 1 << 20
	// maxKeptShells bounds the kept shells per agent (and their buffers'
	// memory); past it, a keep request is refused and the shell hangs up
	// with its channel, as without one.
	maxKeptShells = 32
)

// outputRing holds the last size bytes written, addressed by absolute
// offsets: the first byte ever written is at offset 0.
type outputRing struct {
	size int
	buf  []byte // grows to size, then wraps
	end  uint64 // the offset after the last byte written
}

func (r *outputRing) write(p []byte) {
	for len(p) > 0 {
		var n int
		if len(r.buf) < r.size {
			n = min(len(p), r.size-len(r.buf))
			r.buf = append(r.buf, p[:n]...)
		} else {
			n = copy(r.buf[r.end%uint64(r.size):], p)
		}
		p, r.end = p[n:], r.end+uint64(n)
	}
}

// oldest is the offset of the oldest byte still held.
func (r *outputRing) oldest() uint64 {
	return r.end - uint64(len(r.buf))
}

// readAt copies bytes from off (oldest <= off <= end) into p, up to the end
// or the buffer's wrap, and returns how many.
func (r *outputRing) readAt(p []byte, off uint64) int {
	i := int(off % uint64(r.size))
	return copy(p, r.buf[i:min(len(r.buf), i+int(r.end-off))])
}

// keptShells are an agent's kept shells by token.
type keptShells struct {
	mu     sync.Mutex
	shells map[string]*keptShell
	wg     sync.WaitGroup // the shells' run goroutines
}

// reserve makes a kept shell for ss, which has asked for one, unless the
// agent keeps as many as it may.
func (ks *keptShells) reserve(s *server) *keptShell {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if len(ks.shells) >= maxKeptShells {
		return nil
	}
	if ks.shells == nil {
		ks.shells = map[string]*keptShell{}
	}
	k := &keptShell{srv: s, token: rand.Text(), ring: outputRing{size: s.keptOutputSize}, expired: make(chan struct{})}
	k.cond = sync.NewCond(&k.mu)
	ks.shells[k.token] = k
	return k
}

func (ks *keptShells) lookup(token string) *keptShell {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.shells[token]
}

func (ks *keptShells) remove(k *keptShell) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.shells[k.token] == k {
		delete(ks.shells, k.token)
	}
}

func (ks *keptShells) all() []*keptShell {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	out := make([]*keptShell, 0, len(ks.shells))
	for _, k := range ks.shells {
		out = append(out, k)
	}
	return out
}

// keptShell is one shell that outlives its channel.
type keptShell struct {
	srv   *server
	token string

	mu       sync.Mutex
	cond     *sync.Cond // signalled when any of the fields below changes
	proc     *process   // nil until "shell" or "exec" started it
	ring     outputRing
	attached *session // whose channel the shell's output goes to; nil while detached
	sent     uint64   // the offset up to which attached has been sent its output
	exit     *exitReport
	limit    *time.Timer // runs while detached
	gone     bool        // the keep limit passed: no more resumes
	stopped  bool        // Serve stopped: no more keep limit
	expire   sync.Once
	expired  chan struct{} // closed when the keep limit passed: hang up

	// Input: inOwner is the session whose channel may write to the pty, and
	// received counts the bytes written to it. Writes happen under inMu,
	// so a takeover reads an exact count.
	inMu     sync.Mutex
	inOwner  *session
	received uint64
}

// exitReport is the request that reports how the child ended.
type exitReport struct {
	name    string
	payload []byte
}

// keep answers ss's keep request: ss's shell, once started, will be kept.
func (ss *session) keep() bool {
	if ss.proc != nil || ss.sftp || ss.refused || ss.kept != nil || ss.size == nil {
		return false
	}
	k := ss.srv.kept.reserve(ss.srv)
	if k == nil {
		ss.srv.log.Info("keep refused: the agent keeps as many shells as it may", "max", maxKeptShells)
		return false
	}
	ss.kept = k
	// The answer precedes the reply (channel replies carry no data).
	_, err := ss.ch.SendRequest(sdk.KeepRequest, false, ssh.Marshal(sdk.KeepAnswer{Token: k.token}))
	return err == nil
}

// started runs the kept shell whose process ss has just started, attached
// to ss's channel.
func (k *keptShell) started(ctx context.Context, ss *session) {
	k.mu.Lock()
	k.proc = ss.proc
	k.attached, k.sent = ss, 0
	k.mu.Unlock()
	k.inMu.Lock()
	k.inOwner = ss
	k.inMu.Unlock()
	k.srv.kept.wg.Go(func() { k.run(ctx) })
	ss.wg.Go(func() { k.pumpOutput(ss) })
	ss.wg.Go(func() { k.pumpInput(ss) })
}

// resume answers ss's resume request: it takes the shell over from the
// channel attached to it (which is closed) and sends the answer. The caller
// replies, then calls attach.
func (ss *session) resume(payload []byte) (*keptShell, uint64) {
	var ask sdk.ResumeAsk
	if ss.proc != nil || ss.sftp || ss.refused || ss.kept != nil || ssh.Unmarshal(payload, &ask) != nil {
		return nil, 0
	}
	k := ss.srv.kept.lookup(ask.Token)
	if k == nil {
		ss.srv.log.Info("resume refused: no kept shell has that token")
		return nil, 0
	}
	k.mu.Lock()
	if k.proc == nil || k.gone {
		k.mu.Unlock()
		return nil, 0
	}
	previous := k.attached
	start := max(ask.Offset, k.ring.oldest())
	if start > k.ring.end {
		start = k.ring.end // the client claims more than was written: nothing to replay
	}
	k.attached, k.sent = ss, start
	if k.limit != nil {
		k.limit.Stop()
	}
	oldest := k.ring.oldest()
	k.cond.Broadcast()
	k.mu.Unlock()
	if previous != nil {
		_ = previous.ch.Close()
	}
	// After this, the previous channel writes no more input: the count is exact.
	k.inMu.Lock()
	k.inOwner = ss
	received := k.received
	k.inMu.Unlock()

	ss.proc, ss.kept = k.proc, k
	ss.srv.log.Debug("kept shell resumed", "pid", k.proc.pid(), "offset", ask.Offset, "replay_from", start, "took_over", previous != nil)
	_, err := ss.ch.SendRequest(sdk.ResumeRequest, false, ssh.Marshal(sdk.ResumeAnswer{InputReceived: received, Oldest: oldest}))
	if err != nil {
		return nil, 0
	}
	return k, start
}

// attach starts copying between the shell and ss's channel, after the
// reply to the resume request.
func (k *keptShell) attach(ss *session) {
	ss.wg.Go(func() { k.pumpOutput(ss) })
	ss.wg.Go(func() { k.pumpInput(ss) })
}

// detach notes that ss's channel has gone. If it was the shell's, the
// shell now runs detached, until a resume or the keep limit.
func (k *keptShell) detach(ss *session) {
	k.mu.Lock()
	if k.proc == nil { // the channel went before its shell started
		k.mu.Unlock()
		k.srv.kept.remove(k)
		return
	}
	if k.attached == ss {
		k.attached = nil
		k.cond.Broadcast()
		if limit := k.srv.keepLimit(); limit > 0 && !k.stopped {
			if k.limit == nil {
				k.limit = time.AfterFunc(limit, k.hangup)
			} else {
				k.limit.Reset(limit)
			}
		}
		k.srv.log.Debug("kept shell detached", "pid", k.proc.pid())
	}
	k.mu.Unlock()
	k.inMu.Lock()
	if k.inOwner == ss {
		k.inOwner = nil
	}
	k.inMu.Unlock()
}

// hangup ends the shell once its keep limit has passed while detached.
func (k *keptShell) hangup() {
	k.mu.Lock()
	if k.attached != nil {
		k.mu.Unlock()
		return // resumed as the timer fired
	}
	k.gone = true
	k.mu.Unlock()
	k.srv.kept.remove(k)
	k.expire.Do(func() { close(k.expired) })
}

// run waits for the shell's process while its output fills the ring, and
// hangs it up when the keep limit passes or Serve stops. Once the output
// has drained, the exit is reported on the attached channel (now or when
// one resumes).
func (k *keptShell) run(ctx context.Context) {
	p := k.proc
	var out sync.WaitGroup
	out.Go(func() { k.readOutput(p.outputs[0]) })
	exited := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-k.expired:
			k.srv.log.Info("kept shell hung up: detached longer than the keep limit", "pid", p.pid(), "keep_limit", k.srv.keepLimit())
		case <-ctx.Done():
		case <-exited:
			return
		}
		p.hangup(ctx)
	})
	state := p.wait()
	close(exited)
	watch.Wait()
	out.Wait()
	p.close()
	name, payload := exitMessage(state)
	k.mu.Lock()
	k.exit = &exitReport{name, payload}
	k.cond.Broadcast()
	k.mu.Unlock()
	if ctx.Err() != nil { // Serve stops: nothing resumes the shell any more
		k.mu.Lock()
		k.stopped = true
		if k.limit != nil {
			k.limit.Stop()
		}
		k.mu.Unlock()
		k.srv.kept.remove(k)
	}
	k.srv.linger(ctx, p.pid())
}

// readOutput copies the pty's output into the ring until the pty ends or,
// after the child exited, its output pauses (see copyOut). While a channel
// is attached, it waits for the channel rather than overwrite output not
// yet sent to it; while none is, it never waits.
func (k *keptShell) readOutput(r *os.File) {
	p, act := k.proc, &k.srv.activity
	b := bufPool.Get().(*[copyBufSize]byte)
	defer bufPool.Put(b)
	buf := b[:]
	for {
		n, err := r.Read(buf)
		if n > 0 {
			act.touch()
			k.mu.Lock()
			for k.attached != nil && k.sent < k.ring.end && k.ring.end+uint64(n)-k.sent > uint64(k.ring.size) {
				k.cond.Wait()
			}
			k.ring.write(buf[:n])
			k.cond.Broadcast()
			k.mu.Unlock()
		}
		if err != nil {
			return
		}
		p.drainAfterExit(r)
	}
}

// pumpOutput sends the shell's output to ss's channel while ss is
// attached, then, once the shell has exited and its output is all sent,
// its exit status; then it closes the channel and forgets the shell.
func (k *keptShell) pumpOutput(ss *session) {
	w := lockedWriter{&ss.outMu, ss.ch}
	buf := make([]byte, 32<<10)
	for {
		k.mu.Lock()
		for k.attached == ss && k.sent == k.ring.end && k.exit == nil {
			k.cond.Wait()
		}
		if k.attached != ss {
			k.mu.Unlock()
			return
		}
		// Only a write larger than the ring overtakes an attached channel.
		k.sent = max(k.sent, k.ring.oldest())
		if k.sent < k.ring.end {
			from := k.sent
			n := k.ring.readAt(buf, from)
			k.mu.Unlock()
			if _, err := w.Write(buf[:n]); err != nil {
				return // the channel is gone: detach follows
			}
			k.mu.Lock()
			if k.attached == ss && k.sent == from {
				k.sent += uint64(n)
				k.cond.Broadcast()
			}
			k.mu.Unlock()
			continue
		}
		exit := k.exit
		k.mu.Unlock()
		k.srv.kept.remove(k)
		_, _ = ss.ch.SendRequest(exit.name, false, exit.payload)
		_ = ss.ch.Close()
		return
	}
}

// pumpInput writes what ss's channel receives to the pty, counting it,
// while ss owns the input. A terminal has no half-close: EOF only stops it.
func (k *keptShell) pumpInput(ss *session) {
	act := &k.srv.activity
	b := bufPool.Get().(*[copyBufSize]byte)
	defer bufPool.Put(b)
	buf := b[:]
	for {
		n, err := ss.ch.Read(buf)
		if n > 0 {
			act.touch()
			k.inMu.Lock()
			if k.inOwner != ss {
				k.inMu.Unlock()
				return
			}
			written, werr := k.proc.tty.Write(buf[:n])
			k.received += uint64(written)
			k.inMu.Unlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// notice writes msg into the shell's output, as a line of its own, unless
// it would overwrite output that the attached channel has not been sent
// (its client does not read) or the shell has ended.
func (k *keptShell) notice(msg string) {
	text := []byte("\r\n[devgpu] " + msg + "\r\n")
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc == nil || k.exit != nil || (k.attached != nil && k.ring.end+uint64(len(text))-k.sent > uint64(k.ring.size)) {
		return
	}
	k.ring.write(text)
	k.cond.Broadcast()
}

// keepLimit is how long a kept shell may stay detached: Config.KeepLimit,
// else the agent's IdleExit; 0 means until Serve stops.
func (s *server) keepLimit() time.Duration {
	if s.cfg.KeepLimit > 0 {
		return s.cfg.KeepLimit
	}
	return s.cfg.IdleExit
}
