package agent

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
)

// The preamble is one line the control plane writes on every new connection
// to an agent before the SSH stream starts: "DEVGPU-AGENT/1 <secret>\n".
// It lets the agent accept only connections brokered by the control plane,
// while SSH user authentication inside the tunnel stays trivial.
//
// The control plane's own connections (DialControl) start with another
// magic instead, so that the agent knows them from a user's tunnel, which
// the broker opens with the same secret: only they may start and read the
// session's job. Both magics have the same length, so that the agent reads
// one fixed length whichever comes.
const (
	preambleMagic        = "DEVGPU-AGENT/1 "
	controlPreambleMagic = "DEVGPU-CONTROL "
)

// ErrBadSecret is returned when a connection presents the wrong secret.
var ErrBadSecret = errors.New("agent: wrong session secret")

func preamble(magic, secret string) []byte {
	return []byte(magic + secret + "\n")
}

// WritePreamble presents the session secret on a new agent connection that
// is a user's tunnel.
func WritePreamble(w io.Writer, secret string) error {
	_, err := w.Write(preamble(preambleMagic, secret))
	return err
}

// writeControlPreamble presents the session secret on a new control
// connection (DialControl).
func writeControlPreamble(w io.Writer, secret string) error {
	_, err := w.Write(preamble(controlPreambleMagic, secret))
	return err
}

// readPreamble reads exactly the preambles' length, so nothing of the SSH
// stream behind it is consumed, compares in constant time, and says
// whether the connection is the control plane's own.
func readPreamble(r io.Reader, secret string) (control bool, err error) {
	tunnel, ctl := preamble(preambleMagic, secret), preamble(controlPreambleMagic, secret)
	got := make([]byte, len(tunnel))
	if _, err := io.ReadFull(r, got); err != nil {
		return false, fmt.Errorf("agent: read preamble: %w", err)
	}
	// Both compared, always: which magic came is no secret, but the time
	// taken must not tell how much of the secret matched.
	isTunnel, isControl := subtle.ConstantTimeCompare(got, tunnel), subtle.ConstantTimeCompare(got, ctl)
	if isTunnel|isControl != 1 {
		return false, ErrBadSecret
	}
	return isControl == 1, nil
}
