// Package lifecycle is the session state machine: the states a session
// goes through and the one table of moves between them. Every path that
// changes a session's state (admission, the queue, the start, the claim of
// a ready session, every stop and end, reconcile) asks the store to move it
// with store.Store.TransitionSession, which checks the move here, inside
// the transaction that writes it, and refuses an illegal one with an
// *IllegalMove.
//
//	requested ─► queued ─► starting ─► running ─► stopping ─► ended(reason)
//	    │          │         │   │        │        ▲     │
//	    │          │         │   └────────┼────────┘     │
//	    ▼          ▼         ▼            ▼              ▼
//	    └──────────┴─────────┴────────────┴─────────► failed(reason)
//
// The moves, and what makes them:
//
//   - requested → queued: admission cannot start it now and it may wait.
//   - requested, queued → starting: admitted; its GPUs are reserved.
//   - starting → running: the runtime started it.
//   - starting, running → stopping: a stop was decided (owner, admin,
//     budget, idle, lifetime, disable, detach, lost, reconcile). Its end
//     reason, end time and end state are written with this move, before
//     the runtime is asked to stop it, so that a stop cut short by a crash
//     finishes after a restart with its reason, billed to that time.
//   - stopping → ended: the runtime stopped a session that ran.
//   - stopping → failed: the runtime stopped a session that never ran (a
//     stop while it was starting).
//   - requested, queued, starting, running → failed: it cannot go on (the
//     runtime failed to start it, a waiting request gave up).
//
// ended and failed are final: nothing moves out of them. A move to the
// state a session is already in is not a move, and is refused too.
package lifecycle

import (
	"fmt"

	"github.com/devgpu/devgpu/sdk"
)

// States lists every session state in lifecycle order.
var States = []string{
	sdk.StateRequested, sdk.StateQueued, sdk.StateStarting, sdk.StateRunning,
	sdk.StateStopping, sdk.StateEnded, sdk.StateFailed,
}

// moves is the table of legal moves: from → the states it may go to.
var moves = map[string][]string{
	sdk.StateRequested: {sdk.StateQueued, sdk.StateStarting, sdk.StateFailed},
	sdk.StateQueued:    {sdk.StateStarting, sdk.StateFailed},
	sdk.StateStarting:  {sdk.StateRunning, sdk.StateStopping, sdk.StateFailed},
	sdk.StateRunning:   {sdk.StateStopping, sdk.StateFailed},
	sdk.StateStopping:  {sdk.StateEnded, sdk.StateFailed},
	sdk.StateEnded:     nil,
	sdk.StateFailed:    nil,
}

// IllegalMove is the error of a move the table does not allow.
type IllegalMove struct {
	From, To string
}

func (e *IllegalMove) Error() string {
	if Final(e.From) {
		return fmt.Sprintf("session is %s already and cannot become %s", e.From, e.To)
	}
	return fmt.Sprintf("a %s session cannot become %s", e.From, e.To)
}

// Check returns nil when a session may move from one state to the other,
// and an *IllegalMove otherwise (unknown states included).
func Check(from, to string) error {
	for _, s := range moves[from] {
		if s == to {
			return nil
		}
	}
	return &IllegalMove{From: from, To: to}
}

// Next returns the states a session in state from may move to.
func Next(from string) []string {
	return append([]string(nil), moves[from]...)
}

// Final reports whether state is an end state: ended or failed.
func Final(state string) bool {
	return state == sdk.StateEnded || state == sdk.StateFailed
}

// Valid reports whether state is a session state.
func Valid(state string) bool {
	_, ok := moves[state]
	return ok
}
