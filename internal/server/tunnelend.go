package server

// How a shell's tunnel ends decides what happens to its session: a shell
// that closed lets the session end at once when it was the last one
// (reason closed); a client that vanished may come back, so the session
// waits out its detach grace (reason detached, or it is reattached).
//
// One signal decides: the client's SignalLeave (sdk/tunnel.go), sent on
// the tunnel itself when its shell ended on purpose. Nothing else closes a
// shell. A close frame alone, a broken connection, unanswered pings and a
// server that shuts down or cuts the tunnel are all "vanished". The agent's
// side ending decides nothing by itself: an agent hangs up after an
// OpenSSH client's disconnect (a clean end) and when it dies (a lost
// session) alike, and only the client knows which, so the server tells
// the client (SignalAgentEnded) and waits for its verdict.

// tunnelEvent is something that happens to a tunnel.
type tunnelEvent int

const (
	clientLeft   tunnelEvent = iota // SignalLeave: the shell ended on purpose
	clientClosed                    // a close frame without SignalLeave
	clientLost                      // the connection broke, pings went unanswered, or no verdict came after the agent ended
	agentEnded                      // the agent's side of the stream ended
	serverEnded                     // the server shuts down, or cut the tunnel
)

func (e tunnelEvent) String() string {
	return [...]string{"client left", "client closed", "client lost", "agent ended", "server ended"}[e]
}

// verdict is how a tunnel ended, for its attachment.
type verdict int

const (
	undecided verdict = iota
	shellClosed
	clientVanished
)

func (v verdict) String() string {
	return [...]string{"undecided", "closed", "vanished"}[v]
}

// tunnelEnd decides a tunnel's verdict from its events in the order they
// happen. The zero value is a tunnel in use.
type tunnelEnd struct {
	verdict    verdict
	agentEnded bool // the agent's side ended: only the client's verdict is awaited
}

// observe records ev and returns the verdict, undecided until there is
// one. Once decided, later events change nothing.
func (t *tunnelEnd) observe(ev tunnelEvent) verdict {
	if t.verdict != undecided {
		return t.verdict
	}
	switch ev {
	case clientLeft:
		t.verdict = shellClosed
	case agentEnded:
		t.agentEnded = true
	default:
		t.verdict = clientVanished
	}
	return t.verdict
}
