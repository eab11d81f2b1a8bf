package sqlstore

// PLACEHOLDER until the store part of issue 12 lands: every method of the
// replica contract fails, so that the rest of the tree builds meanwhile.

import (
	"context"
	"errors"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

var errReplicasPending = errors.New("replica store methods are not implemented yet")

func (s *Store) RegisterReplica(ctx context.Context, r *store.Replica) error {
	return errReplicasPending
}
func (s *Store) HeartbeatReplica(ctx context.Context, id string) error { return errReplicasPending }
func (s *Store) ListReplicas(ctx context.Context) ([]store.Replica, error) {
	return nil, errReplicasPending
}
func (s *Store) RemoveReplica(ctx context.Context, id string, at time.Time) ([]string, error) {
	return nil, errReplicasPending
}
func (s *Store) StaleReplicas(ctx context.Context, maxAge time.Duration) ([]store.Replica, error) {
	return nil, errReplicasPending
}
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (store.Lease, error) {
	return store.Lease{}, errReplicasPending
}
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	return errReplicasPending
}
func (s *Store) Lease(ctx context.Context, name string) (store.Lease, error) {
	return store.Lease{}, errReplicasPending
}
func (s *Store) CheckLease(ctx context.Context, name, holder string, epoch int64) error {
	return errReplicasPending
}
func (s *Store) AddAttachment(ctx context.Context, a *store.Attachment) error {
	return errReplicasPending
}
func (s *Store) RemoveAttachment(ctx context.Context, id int64, at time.Time) (int, error) {
	return 0, errReplicasPending
}
func (s *Store) ListAttachments(ctx context.Context, sessionID string) ([]store.Attachment, error) {
	return nil, errReplicasPending
}
func (s *Store) SetLink(ctx context.Context, sessionID, replica string) error {
	return errReplicasPending
}
func (s *Store) ClearLink(ctx context.Context, sessionID, replica string) error {
	return errReplicasPending
}
func (s *Store) LinkOf(ctx context.Context, sessionID string) (store.Replica, error) {
	return store.Replica{}, errReplicasPending
}
