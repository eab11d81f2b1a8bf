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
const preambleMagic = "DEVGPU-AGENT/1 "

// ErrBadSecret is returned when a connection presents the wrong secret.
var ErrBadSecret = errors.New("agent: wrong session secret")

func preamble(secret string) []byte {
	return []byte(preambleMagic + secret + "\n")
}

// WritePreamble presents the session secret on a new agent connection.
func WritePreamble(w io.Writer, secret string) error {
	_, err := w.Write(preamble(secret))
	return err
}

// readPreamble reads exactly the expected preamble's length, so nothing of
// the SSH stream behind it is consumed, and compares in constant time.
func readPreamble(r io.Reader, secret string) error {
	want := preamble(secret)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		return fmt.Errorf("agent: read preamble: %w", err)
	}
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return ErrBadSecret
	}
	return nil
}
