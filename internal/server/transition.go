package server

import (
	"context"
	"errors"
	"time"

	"github.com/devgpu/devgpu/internal/lifecycle"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// transition moves a session to another state inside tx (see
// store.Store.TransitionSession), the one road every path takes to change
// a session's state. A move the lifecycle table refuses is logged here and
// returned: an *lifecycle.IllegalMove that is also store.ErrConflict.
func (s *Server) transition(ctx context.Context, tx store.Store, id, to string, change func(*store.Session)) (store.Session, error) {
	sess, err := tx.TransitionSession(ctx, id, to, change)
	if im := (*lifecycle.IllegalMove)(nil); errors.As(err, &im) {
		s.log.Warn("illegal session move refused", "session_id", id, "from", im.From, "to", im.To)
	}
	return sess, err
}

// markStopping, inside tx, moves a starting or running session to
// stopping with everything needed to finish it after a crash: the reason,
// the billing end, who decided, and the state it ends in (failed when it
// never ran). A session already stopping keeps the stop recorded first,
// and is returned as it is.
func (s *Server) markStopping(ctx context.Context, tx store.Store, id, reason, actor string, at time.Time) (store.Session, error) {
	cur, err := tx.Session(ctx, id)
	if err != nil || cur.State == sdk.StateStopping {
		return cur, err
	}
	endState := sdk.StateEnded
	if cur.State != sdk.StateRunning {
		endState = sdk.StateFailed
	}
	return s.transition(ctx, tx, id, sdk.StateStopping, func(x *store.Session) {
		x.EndReason, x.EndedAt, x.EndActor, x.EndState = reason, at, actor, endState
		// Shells still attached are cut off by the stop.
		x.Attachments = 0
	})
}
