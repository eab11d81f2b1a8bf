package lifecycle

import (
	"errors"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

// TestCheck tries every move from every state to every state (and to and
// from a state that does not exist) against the table written out here
// independently of the package's own.
func TestCheck(t *testing.T) {
	const (
		rq = sdk.StateRequested
		qu = sdk.StateQueued
		st = sdk.StateStarting
		ru = sdk.StateRunning
		sp = sdk.StateStopping
		en = sdk.StateEnded
		fa = sdk.StateFailed
	)
	legal := map[[2]string]bool{
		{rq, qu}: true, {rq, st}: true, {rq, fa}: true,
		{qu, st}: true, {qu, fa}: true,
		{st, ru}: true, {st, sp}: true, {st, fa}: true,
		{ru, sp}: true, {ru, fa}: true,
		{sp, en}: true, {sp, fa}: true,
	}
	all := append(append([]string(nil), States...), "", "paused")
	n := 0
	for _, from := range all {
		for _, to := range all {
			err := Check(from, to)
			if legal[[2]string{from, to}] {
				n++
				if err != nil {
					t.Errorf("Check(%q, %q) = %v, want a legal move", from, to, err)
				}
				continue
			}
			var im *IllegalMove
			if !errors.As(err, &im) || im.From != from || im.To != to {
				t.Errorf("Check(%q, %q) = %v, want *IllegalMove{%q, %q}", from, to, err, from, to)
			}
		}
	}
	if n != len(legal) {
		t.Errorf("checked %d legal moves, want %d", n, len(legal))
	}
}

func TestFinal(t *testing.T) {
	for _, s := range States {
		want := s == sdk.StateEnded || s == sdk.StateFailed
		if Final(s) != want {
			t.Errorf("Final(%s) = %v, want %v", s, !want, want)
		}
		if want != (len(Next(s)) == 0) {
			t.Errorf("Next(%s) = %v: only final states have no moves", s, Next(s))
		}
		if !Valid(s) {
			t.Errorf("Valid(%s) = false", s)
		}
	}
	if Valid("paused") {
		t.Error(`Valid("paused") = true`)
	}
}

func TestIllegalMoveMessage(t *testing.T) {
	for _, c := range []struct{ from, to, want string }{
		{sdk.StateEnded, sdk.StateRunning, "session is ended already and cannot become running"},
		{sdk.StateQueued, sdk.StateRunning, "a queued session cannot become running"},
	} {
		if got := Check(c.from, c.to).Error(); got != c.want {
			t.Errorf("Check(%s, %s) = %q, want %q", c.from, c.to, got, c.want)
		}
	}
}
