package server

import (
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// A new leader never fails a start a live replica is making (its runtime
// may be creating the session now, on devices the store still counts);
// once that replica is gone, the leader fails it.
func TestLeaderFailsOnlyStartsOfGoneReplicas(t *testing.T) {
	t.Parallel()
	r := newReplicaRig(t)
	a, b := r.replica("a"), r.replica("b")
	r.project(a, "p", time.Hour)
	testutil.Eventually(t, testutil.WaitMedium, "one replica to lead", func() bool { return len(leaders(a, b)) == 1 })
	lead, starter := a, b
	if b.srv.IsLeader() {
		lead, starter = b, a
	}
	p, err := lead.st.ProjectByName(r.ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	root, err := lead.st.UserByName(r.ctx, "root")
	if err != nil {
		t.Fatal(err)
	}
	sess := store.Session{ID: newSessionID(), ProjectID: p.ID, UserID: root.ID, State: sdk.StateStarting, GPUType: "t4",
		Region: "local", Backend: "local", GPUCount: 1, CreatedAt: time.Now(), Starter: starter.srv.replicaID()}
	if err := lead.st.CreateSession(r.ctx, &sess); err != nil {
		t.Fatal(err)
	}
	if err := lead.srv.reconcile(r.ctx); err != nil {
		t.Fatal(err)
	}
	lead.srv.failOrphanedStarts(r.ctx)
	if got, _ := lead.st.Session(r.ctx, sess.ID); got.State != sdk.StateStarting {
		t.Fatalf("a start a live replica makes is %s after the leader's reconcile, want starting", got.State)
	}
	starter.kill()
	testutil.Eventually(t, testutil.WaitMedium, "the starter to be declared dead", func() bool {
		replicas, err := lead.st.ListReplicas(r.ctx)
		if err != nil {
			return false
		}
		for _, rep := range replicas {
			if rep.ID == starter.srv.replicaID() {
				return false
			}
		}
		return true
	})
	lead.srv.failOrphanedStarts(r.ctx)
	if got, _ := lead.st.Session(r.ctx, sess.ID); got.State != sdk.StateFailed {
		t.Fatalf("a start whose replica is gone is %s, want failed", got.State)
	}
}
