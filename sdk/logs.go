package sdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
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

// Next is the offset right after the record: where a client that got it
// resumes (After). A heartbeat or an end record moves nothing, so Next is
// after, the offset the client had.
func (r LogRecord) Next(after int64) int64 {
	switch {
	case r.Dropped > 0:
		return max(after, r.Offset+r.Dropped)
	case len(r.Data) > 0:
		return max(after, r.Offset+int64(len(r.Data)))
	}
	return after
}

// from returns the part of r at or after offset after, and false when
// none of it is: a server that answers from an earlier record boundary
// never makes a client that resumes print output twice.
func (r LogRecord) from(after int64) (LogRecord, bool) {
	skip := after - r.Offset
	switch {
	case skip <= 0:
	case r.Dropped > 0:
		if skip >= r.Dropped {
			return r, false
		}
		r.Offset, r.Dropped = after, r.Dropped-skip
	case len(r.Data) > 0:
		if skip >= int64(len(r.Data)) {
			return r, false
		}
		r.Offset, r.Data = after, r.Data[skip:]
	}
	return r, true
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

// maxLogLine bounds one line of the logs stream: a record carries up to
// 256 KiB of output, which base64 and JSON make about a third bigger.
const maxLogLine = 2 << 20

// ErrLogCut is the error of a followed log stream that ended before its
// end record (the server restarted, say): ask again from where it stopped.
var ErrLogCut = errors.New("the log stream ended before the run did")

// Logs calls each for the records of session id's output that q selects,
// in order. It returns nil after the end record (or, without q.Follow,
// after the last record kept now), each's error when each fails, or the
// error that cut the stream: a caller that follows asks again from the
// end of the last record it got.
func (c *Client) Logs(ctx context.Context, id string, q LogQuery, each func(LogRecord) error) error {
	v := url.Values{}
	if q.After > 0 {
		v.Set("after", strconv.FormatInt(q.After, 10))
	}
	if q.Stream != "" {
		v.Set("stream", q.Stream)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Follow {
		v.Set("follow", "true")
	}
	path := "/api/v1/sessions/" + url.PathEscape(id) + "/logs"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	resp, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxLogLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec LogRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("read the log of session %s: %w", id, err)
		}
		rec, ok := rec.from(q.After)
		if !ok {
			continue
		}
		if err := each(rec); err != nil {
			return err
		}
		if rec.End != nil {
			return nil
		}
	}
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case sc.Err() != nil:
		return fmt.Errorf("read the log of session %s: %w", id, sc.Err())
	case q.Follow:
		return fmt.Errorf("session %s: %w", id, ErrLogCut)
	}
	return nil
}

// exitPoll is how long one question of WaitExit asks the server to wait.
const exitPoll = 60 * time.Second

// Backoff between WaitExit's tries to reach the server again.
const (
	retryMin = 250 * time.Millisecond
	retryMax = 5 * time.Second
)

// WaitExit waits until session id has ended and returns it, asking again
// after network errors and the server's own timeouts, until ctx is done.
func (c *Client) WaitExit(ctx context.Context, id string) (Session, error) {
	return c.WaitExitReporting(ctx, id, nil)
}

// WaitExitReporting is WaitExit that also tells away, when not nil, once
// when the server stops answering (with the error it gave) and once, with
// nil, when it answers again, so that a caller can say why it is quiet.
func (c *Client) WaitExitReporting(ctx context.Context, id string, away func(error)) (Session, error) {
	path := "/api/v1/sessions/" + url.PathEscape(id) + "/exit?" + url.Values{"timeout": {exitPoll.String()}}.Encode()
	backoff := retryMin
	unanswered := false
	for {
		var s Session
		err := c.do(ctx, http.MethodGet, path, nil, &s)
		if err == nil && unanswered {
			unanswered = false
			away(nil)
		}
		switch {
		case err == nil && !s.Active():
			return s, nil
		case err == nil:
			backoff = retryMin
			continue
		case ctx.Err() != nil:
			return s, ctx.Err()
		case !Transient(err):
			return s, err
		}
		if !unanswered && away != nil {
			unanswered = true
			away(err)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, retryMax)
	}
}

// Transient reports whether err, from a request to the server, may pass
// if asked again: the server could not be reached or its stream was cut
// (it restarts, the network dropped), or a proxy in front of it answered
// that it is away. An answer of the server's own (a 404, a refusal) and
// a certificate the client does not trust are not.
func Transient(err error) bool {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Status == http.StatusBadGateway || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout
	case IsUntrusted(err), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	}
	return true
}
