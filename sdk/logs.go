package sdk

import (
	"context"
	"errors"
	"time"
)

// Streams of a detached run's output.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// LogRecord is one line of GET /api/v1/sessions/{id}/logs, a stream of
// JSON lines. Offset places it in the run's output, both streams counted
// together in the order the agent read them, so a client that lost the
// stream asks again with After set to the end of the last record it got
// (Offset + len(Data), or + Dropped).
//
// A record is one of: output (Stream, At, Data); a gap (Dropped > 0: that
// many bytes at Offset are not kept, because the run printed more than the
// project's log limit or faster than the server could keep); the end (End
// set: the session ended and everything kept was sent); or a heartbeat
// (nothing set), which keeps a quiet followed stream alive.
type LogRecord struct {
	Offset  int64     `json:"offset"`
	Stream  string    `json:"stream,omitempty"`
	At      time.Time `json:"at,omitzero"`
	Data    []byte    `json:"data,omitempty"`
	Dropped int64     `json:"dropped,omitempty"`
	End     *Session  `json:"end,omitempty"`
}

// LogQuery selects a detached run's output: records from After on, of
// Stream only (empty: both), read at or after Since (zero: all). Follow
// keeps the stream open for new output until the session ends.
type LogQuery struct {
	After  int64
	Stream string
	Since  time.Time
	Follow bool
}

// Logs calls each for the records of session id's output that q selects,
// in order. It returns nil after the end record (or, without q.Follow,
// after the last record kept now), each's error when each fails, or the
// error that cut the stream: a caller that follows asks again from the
// end of the last record it got.
func (c *Client) Logs(ctx context.Context, id string, q LogQuery, each func(LogRecord) error) error {
	return errors.New("sdk: Logs is not implemented yet")
}

// WaitExit waits until session id has ended and returns it, asking again
// after network errors and the server's own timeouts, until ctx is done.
func (c *Client) WaitExit(ctx context.Context, id string) (Session, error) {
	return Session{}, errors.New("sdk: WaitExit is not implemented yet")
}
