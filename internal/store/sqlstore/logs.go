package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// loggingSession is the condition on sessions that their log may grow:
// the command may still run, or its last output may still be arriving.
var loggingSession = fmt.Sprintf(`state IN ('%s', '%s')`, sdk.StateRunning, sdk.StateStopping)

// keptLogs is the condition on sessions that their run ended and its log
// keeps some output, written as the sessions_kept_logs index's condition
// (log_bytes > 0) so that both engines use it.
var keptLogs = fmt.Sprintf(`log_bytes > 0 AND state IN ('%s', '%s')`, sdk.StateEnded, sdk.StateFailed)

// logRowsPerInsert bounds the rows of one INSERT: five parameters a row
// stay far below either engine's limit on a statement's parameters.
const logRowsPerInsert = 500

// AppendLogs implements store.Store. The chunks are checked before the
// write; in it, the session's row is locked first, so that of two writers
// from one offset the second sees the first's and gets ErrConflict.
func (s *Store) AppendLogs(ctx context.Context, sessionID string, from, to int64, chunks []store.LogChunk, limit int64) error {
	action := fmt.Sprintf("append to the log of session %s at offset %d", sessionID, from)
	if err := checkChunks(from, to, chunks); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	return s.wrap(action, s.atomic(ctx, func(tx *Store) error {
		var state string
		var offset, kept int64
		err := tx.queryRow(ctx, `SELECT state, log_offset, log_bytes FROM sessions WHERE id = ?`+tx.d.ForUpdate,
			sessionID).Scan(&state, &offset, &kept)
		if err != nil {
			return err
		}
		if state != sdk.StateRunning && state != sdk.StateStopping {
			return fmt.Errorf("session is %s: %w", state, store.ErrConflict)
		}
		if offset != from {
			return fmt.Errorf("its log reaches offset %d (another writer appended): %w", offset, store.ErrConflict)
		}
		added := logSize(chunks)
		if limit > 0 && kept+added > limit {
			if added >= limit {
				// The new output alone fills the log: none kept before stays.
				if _, err := tx.exec(ctx, `DELETE FROM session_logs WHERE session_id = ?`, sessionID); err != nil {
					return fmt.Errorf("drop the oldest output: %w", err)
				}
				kept = 0
				chunks = newest(chunks, limit)
				added = logSize(chunks)
			} else if kept, err = tx.dropOldestLogs(ctx, sessionID, kept, limit-added, added == 0); err != nil {
				return fmt.Errorf("drop the oldest output: %w", err)
			}
		}
		if err := tx.insertLogs(ctx, sessionID, chunks); err != nil {
			return err
		}
		_, err = tx.exec(ctx, `UPDATE sessions SET log_offset = ?, log_bytes = ? WHERE id = ?`, to, kept+added, sessionID)
		return err
	}))
}

// checkChunks refuses chunks that do not continue a log at from, in
// order and apart, within to.
func checkChunks(from, to int64, chunks []store.LogChunk) error {
	if from < 0 || to < from {
		return fmt.Errorf("offsets %d to %d are not a span of output; append from a log's offset to one at or after it", from, to)
	}
	end := from
	for i, c := range chunks {
		switch {
		case c.Stream != sdk.StreamStdout && c.Stream != sdk.StreamStderr:
			return fmt.Errorf("chunk %d is of stream %q; name %s or %s", i, c.Stream, sdk.StreamStdout, sdk.StreamStderr)
		case len(c.Data) == 0:
			return fmt.Errorf("chunk %d at offset %d is empty; append only output", i, c.Offset)
		case c.At.IsZero():
			return fmt.Errorf("chunk %d at offset %d has no time; record when the agent read it", i, c.Offset)
		case c.Offset < end:
			return fmt.Errorf("chunk %d starts at offset %d, before %d where the log or the chunk before ends; append chunks in order, apart",
				i, c.Offset, end)
		}
		end = c.Offset + int64(len(c.Data))
		if end > to {
			return fmt.Errorf("chunk %d ends at offset %d, past %d where the append ends; move the end to after the last chunk", i, end, to)
		}
	}
	return nil
}

// newest returns the newest of chunks that hold at most limit bytes, the
// oldest whole chunks dropped first; when the newest alone holds more, its
// newest limit bytes. It leaves chunks' elements as they are.
func newest(chunks []store.LogChunk, limit int64) []store.LogChunk {
	size := logSize(chunks)
	for len(chunks) > 1 && size > limit {
		size -= int64(len(chunks[0].Data))
		chunks = chunks[1:]
	}
	if size <= limit {
		return chunks
	}
	c := chunks[0]
	c.Offset += size - limit
	c.Data = c.Data[size-limit:]
	return []store.LogChunk{c}
}

// logSize is how many bytes of output chunks hold.
func logSize(chunks []store.LogChunk) (n int64) {
	for _, c := range chunks {
		n += int64(len(c.Data))
	}
	return n
}

// dropOldestLogs drops the oldest whole chunks of the session's log, which
// keeps kept bytes, until it keeps at most budget (> 0), and returns what
// it keeps then. It reads the sizes of the chunks it drops, and one more,
// and deletes them in one statement. When the newest chunk alone is over
// budget, it keeps that chunk's newest budget bytes if trimNewest is set
// (no chunk follows it), and drops it whole otherwise.
func (s *Store) dropOldestLogs(ctx context.Context, sessionID string, kept, budget int64, trimNewest bool) (int64, error) {
	rows, err := s.query(ctx, `SELECT off, LENGTH(data) FROM session_logs WHERE session_id = ? ORDER BY off`, sessionID)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	cut, lastOff, lastSize := int64(-1), int64(0), int64(0)
	for kept > budget && rows.Next() {
		if err := rows.Scan(&lastOff, &lastSize); err != nil {
			return 0, err
		}
		kept -= lastSize
		cut = lastOff + 1 // delete up to this chunk, itself included
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if err := rows.Close(); err != nil {
		return 0, err
	}
	if cut < 0 {
		return kept, nil
	}
	trim := trimNewest && kept == 0 && lastSize > budget
	if trim {
		cut = lastOff // all but the newest: it is trimmed below
	}
	if _, err := s.exec(ctx, `DELETE FROM session_logs WHERE session_id = ? AND off < ?`, sessionID, cut); err != nil {
		return 0, err
	}
	if !trim {
		return kept, nil
	}
	skip := lastSize - budget
	_, err = s.exec(ctx, `UPDATE session_logs SET off = off + ?, data = SUBSTR(data, ?) WHERE session_id = ? AND off = ?`,
		skip, skip+1, sessionID, lastOff)
	return budget, err
}

// insertLogs inserts chunks into the session's log, many rows a statement.
func (s *Store) insertLogs(ctx context.Context, sessionID string, chunks []store.LogChunk) error {
	for len(chunks) > 0 {
		batch := chunks[:min(len(chunks), logRowsPerInsert)]
		chunks = chunks[len(batch):]
		args := make([]any, 0, 5*len(batch))
		for _, c := range batch {
			args = append(args, sessionID, c.Offset, c.Stream, dbTime(c.At), c.Data)
		}
		values := strings.TrimSuffix(strings.Repeat(`(?, ?, ?, ?, ?), `, len(batch)), `, `)
		if _, err := s.exec(ctx, `INSERT INTO session_logs (session_id, off, stream, at, data) VALUES `+values, args...); err != nil {
			return fmt.Errorf("insert %d chunks from offset %d: %w", len(batch), batch[0].Offset, err)
		}
	}
	return nil
}

// Logs implements store.Store.
func (s *Store) Logs(ctx context.Context, f store.LogFilter) ([]store.LogChunk, error) {
	action := fmt.Sprintf("read the log of session %s from offset %d", f.SessionID, f.After)
	q := `SELECT off, stream, at, data FROM session_logs WHERE session_id = ? AND off >= ? ORDER BY off`
	args := []any{f.SessionID, f.After}
	if f.Limit > 0 {
		q, args = q+` LIMIT ?`, append(args, f.Limit)
	}
	rows, err := s.query(ctx, q, args...)
	chunks, err := collect(rows, err, func(rows *sql.Rows) (c store.LogChunk, err error) {
		return c, rows.Scan(&c.Offset, &c.Stream, timeCol{&c.At}, &c.Data)
	})
	if err != nil || len(chunks) > 0 {
		return chunks, s.wrap(action, err)
	}
	// Nothing kept from there on: is there such a session at all?
	var one int
	return nil, s.wrap(action, s.queryRow(ctx, `SELECT 1 FROM sessions WHERE id = ?`, f.SessionID).Scan(&one))
}

// SetExit implements store.Store.
func (s *Store) SetExit(ctx context.Context, id string, status int, signal string) error {
	action := fmt.Sprintf("record the exit of session %s", id)
	var n int64
	err := s.write(ctx, func() error {
		res, err := s.exec(ctx, `UPDATE sessions SET exit_status = ?, exit_signal = ? WHERE id = ? AND `+loggingSession,
			status, signal, id)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil || n > 0 {
		return s.wrap(action, err)
	}
	return s.unchanged(ctx, action, id, func(state string) string { return "session is " + state })
}

// DeleteLogs implements store.Store.
func (s *Store) DeleteLogs(ctx context.Context, endedBefore time.Time) (int, error) {
	action := fmt.Sprintf("delete the logs of runs that ended before %s", endedBefore.UTC().Format(time.RFC3339))
	expired := keptLogs + ` AND ended_at < ?`
	var n int64
	err := s.atomic(ctx, func(tx *Store) error {
		if _, err := tx.exec(ctx, `DELETE FROM session_logs WHERE session_id IN (SELECT id FROM sessions WHERE `+expired+`)`,
			endedBefore.UnixMicro()); err != nil {
			return err
		}
		res, err := tx.exec(ctx, `UPDATE sessions SET log_bytes = 0 WHERE `+expired, endedBefore.UnixMicro())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), s.wrap(action, err)
}
