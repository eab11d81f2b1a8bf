package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/devgpu/devgpu/sdk"
)

// Two replicas on PostgreSQL: the leader, which follows a detached run,
// is killed (SIGKILL) while the run prints; the replica that leads next
// follows it on from the stored offset. The run completes with its exit
// status, its log has every line once, and its usage is its running
// seconds.
func TestDetachedRunLeaderKilled(t *testing.T) {
	t.Parallel()
	rs := newReplicaSet(t, 2, "t4:1")
	e := rs.admin
	var me sdk.Whoami
	if r := e.cli("whoami", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &me) != nil || me.User == "" {
		t.Fatalf("whoami --json: %+v", r)
	}
	e.admin("project", "create", "jobs", "--gpu-enabled=true")
	e.admin("member", "add", "jobs", me.User)
	const n, pause = 30, 15
	id := e.runDetached("-p", "jobs", "--", counter(n, pause)+"; exit 4")
	e.awaitLogged(id, pausedAt(pause))
	lead, lease := rs.leader(0)
	t.Logf("killing the leader, replica %d (epoch %d)", lead.idx, lease.Epoch)
	lead.stop(syscall.SIGKILL)
	// The run prints on while no replica leads.
	if err := os.WriteFile(filepath.Join(rs.root, "shared", "sessions", id, "home", "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	next, _ := rs.leader(lease.Epoch)
	t.Logf("replica %d leads", next.idx)

	s := e.waitEnded(id)
	wantCompleted(t, s, 4)
	e.wantLogged(id, n, "after the leader was killed")
	e.wantBilled(s.EndedAt.Sub(*s.StartedAt).Seconds(), "the run's running seconds, across the leader's death")
}
