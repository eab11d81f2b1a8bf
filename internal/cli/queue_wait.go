package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// Backoff between tries to reach a restarting server again while queued.
const (
	reconnectMin = 250 * time.Millisecond
	reconnectMax = 5 * time.Second
)

// createWaiting asks for a session as CreateSession does. When the stream
// of a queued request breaks (the server restarted, or the network
// dropped), it waits on the same queued session with WaitSession, trying
// again with backoff, so the request keeps its place; reconnecting hears
// each try. It gives up when ctx ends (removing the queued session, as
// CreateSession does) or when the wait the request asked for has passed.
func createWaiting(ctx context.Context, client *sdk.Client, req sdk.CreateSessionRequest, progress func(sdk.SessionEvent), reconnecting func(id string)) (sdk.Session, error) {
	deadline := time.Now().Add(time.Duration(req.Wait))
	sess, err := client.CreateSession(ctx, req, progress)
	backoff := reconnectMin
	for {
		var cut *sdk.WaitInterrupted
		if !errors.As(err, &cut) {
			return sess, err
		}
		if time.Now().After(deadline) {
			return sess, fmt.Errorf("the server could not be reached again within the %s wait (%w); queued session %s gives up by itself", time.Duration(req.Wait), cut.Err, cut.SessionID)
		}
		if reconnecting != nil {
			reconnecting(cut.SessionID)
		}
		select {
		case <-ctx.Done():
			client.GiveUp(cut.SessionID)
			return sess, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, reconnectMax)
		sess, err = client.WaitSession(ctx, cut.SessionID, func(ev sdk.SessionEvent) {
			backoff = reconnectMin // reached it: the next cut starts afresh
			if progress != nil {
				progress(ev)
			}
		})
	}
}
