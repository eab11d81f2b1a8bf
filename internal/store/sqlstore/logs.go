package sqlstore

import (
	"context"
	"errors"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

var errLogsNotYet = errors.New("sqlstore: detached runs' logs are not implemented yet")

// AppendLogs implements store.Store.
func (s *Store) AppendLogs(ctx context.Context, sessionID string, from, to int64, chunks []store.LogChunk, limit int64) error {
	return errLogsNotYet
}

// Logs implements store.Store.
func (s *Store) Logs(ctx context.Context, f store.LogFilter) ([]store.LogChunk, error) {
	return nil, errLogsNotYet
}

// SetExit implements store.Store.
func (s *Store) SetExit(ctx context.Context, id string, status int, signal string) error {
	return errLogsNotYet
}

// DeleteLogs implements store.Store.
func (s *Store) DeleteLogs(ctx context.Context, endedBefore time.Time) (int, error) {
	return 0, errLogsNotYet
}
