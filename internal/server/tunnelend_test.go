package server

import (
	"fmt"
	"testing"
)

// orders returns every ordering of every non-empty subset of events.
func orders(events []tunnelEvent) [][]tunnelEvent {
	var out [][]tunnelEvent
	var grow func(prefix []tunnelEvent, rest []tunnelEvent)
	grow = func(prefix, rest []tunnelEvent) {
		if len(prefix) > 0 {
			out = append(out, prefix)
		}
		for i, ev := range rest {
			next := append(append([]tunnelEvent{}, prefix...), ev)
			left := append(append([]tunnelEvent{}, rest[:i]...), rest[i+1:]...)
			grow(next, left)
		}
	}
	grow(nil, events)
	return out
}

// The verdict over every order of the events that end a tunnel (the
// client's leave signal, its close frame without it, network loss, the
// agent's side ending, a server shutdown): a shell closed exactly when the
// client's leave came before any other end of the client or server; the
// agent's end never decides; once decided, nothing changes the verdict.
func TestTunnelVerdictEveryOrder(t *testing.T) {
	t.Parallel()
	all := orders([]tunnelEvent{clientLeft, clientClosed, clientLost, agentEnded, serverEnded})
	if len(all) != 5+20+60+120+120 {
		t.Fatalf("%d orders, want 325", len(all))
	}
	for _, seq := range all {
		t.Run(fmt.Sprint(seq), func(t *testing.T) {
			want, decidedAt := undecided, -1
			for i, ev := range seq {
				if ev == agentEnded {
					continue
				}
				decidedAt = i
				want = clientVanished
				if ev == clientLeft {
					want = shellClosed
				}
				break
			}
			var end tunnelEnd
			for i, ev := range seq {
				got := end.observe(ev)
				switch {
				case i < decidedAt || decidedAt < 0:
					if got != undecided {
						t.Fatalf("after %v: %v, want still undecided", seq[:i+1], got)
					}
				default:
					if got != want {
						t.Fatalf("after %v: %v, want %v", seq[:i+1], got, want)
					}
				}
			}
			if end.verdict != want {
				t.Fatalf("verdict %v, want %v", end.verdict, want)
			}
			agentFirst := false
			for i, ev := range seq {
				if decidedAt >= 0 && i >= decidedAt {
					break
				}
				agentFirst = agentFirst || ev == agentEnded
			}
			if end.agentEnded != agentFirst {
				t.Fatalf("agentEnded = %v, want %v (the agent ended before the verdict)", end.agentEnded, agentFirst)
			}
		})
	}
}
