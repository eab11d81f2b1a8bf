// Package storetest is the conformance suite every store.Store engine
// passes: each engine's tests call Run with a function that opens a new,
// empty store.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/sdk"
)

// Timeout bounds each test of the suite.
const Timeout = 60 * time.Second

// Run runs the suite. open returns a new, empty store and closes it in a
// t.Cleanup of its own.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s store.Store)
	}{
		{"Users", testUsers},
		{"SetUserDisabled", testSetUserDisabled},
		{"Tokens", testTokens},
		{"TokenAdmin", testTokenAdmin},
		{"TokenTree", testTokenTree},
		{"Projects", testProjects},
		{"ProjectSettings", testProjectSettings},
		{"DeleteProject", testDeleteProject},
		{"Members", testMembers},
		{"UpdateUser", testUpdateUser},
		{"TokenMethod", testTokenMethod},
		{"MemberSource", testMemberSource},
		{"SSOLogins", testSSOLogins},
		{"OrgPolicy", testOrgPolicy},
		{"Audit", testAudit},
		{"AuditOrder", testAuditOrder},
		{"AuditFilters", testAuditFilters},
		{"Capacity", testCapacity},
		{"CapacityInTx", testCapacityInTx},
		{"Placement", testPlacement},
		{"PlacementOrder", testPlacementOrder},
		{"Sessions", testSessions},
		{"EndSession", testEndSession},
		{"TransitionTable", testTransitionTable},
		{"TransitionSession", testTransitionSession},
		{"TransitionInTx", testTransitionInTx},
		{"ListSessions", testListSessions},
		{"Times", testTimes},
		{"InTx", testInTx},
		{"InTxRollback", testInTxRollback},
		{"NestedInTx", testNestedInTx},
		{"Usage", testUsage},
		{"UsageOverlap", testUsageOverlap},
		{"UsageInTx", testUsageInTx},
		{"UsageOutlivesProject", testUsageOutlivesProject},
		{"RateCards", testRateCards},
		{"BudgetAlerts", testBudgetAlerts},
		{"MonthUse", testMonthUse},
		{"Images", testImages},
		{"WarmPools", testWarmPools},
		{"ClaimSession", testClaimSession},
		{"Queue", testQueue},
		{"Replicas", testReplicas},
		{"StaleReplicas", testStaleReplicas},
		{"Leases", testLeases},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseRace", testLeaseRace},
		{"CheckLease", testCheckLease},
		{"FenceHoldsTakeover", testFenceHoldsTakeover},
		{"Attachments", testAttachments},
		{"Links", testLinks},
		{"RemoveReplica", testRemoveReplica},
		{"Logs", testLogs},
		{"LogLimit", testLogLimit},
		{"ConcurrentAppend", testConcurrentAppend},
		{"SetExit", testSetExit},
		{"DeleteLogs", testDeleteLogs},
		{"LogsGoWithSession", testLogsGoWithSession},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), Timeout)
			defer cancel()
			tt.fn(t, ctx, open(t))
		})
	}
	// Not parallel: each holds many connections at once.
	t.Run("ConcurrentCapacity", func(t *testing.T) { testConcurrentAdmission(t, open(t), false) })
	t.Run("ConcurrentCap", func(t *testing.T) { testConcurrentAdmission(t, open(t), true) })
	t.Run("ConcurrentUsage", func(t *testing.T) { testConcurrentUsage(t, open(t)) })
	t.Run("ConcurrentAttachments", func(t *testing.T) { testConcurrentAttachments(t, open(t)) })
}

func testUsers(t *testing.T, ctx context.Context, s store.Store) {
	bob := store.User{Name: "bob", OrgAdmin: true}
	if err := s.CreateUser(ctx, &bob); err != nil {
		t.Fatal(err)
	}
	if bob.ID == 0 || bob.CreatedAt.IsZero() {
		t.Fatalf("CreateUser left ID or CreatedAt unset: %+v", bob)
	}
	alice := mustUser(t, ctx, s, "alice")
	carol := store.User{Name: "carol", Disabled: true}
	if err := s.CreateUser(ctx, &carol); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, &store.User{Name: "bob"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateUser(duplicate) = %v, want ErrConflict", err)
	}

	got, err := s.UserByName(ctx, "bob")
	if err != nil || !reflect.DeepEqual(got, bob) {
		t.Errorf("UserByName = %+v, %v; want %+v", got, err, bob)
	}
	got, err = s.UserByID(ctx, carol.ID)
	if err != nil || !reflect.DeepEqual(got, carol) {
		t.Errorf("UserByID = %+v, %v; want %+v", got, err, carol)
	}
	if _, err := s.UserByName(ctx, "dave"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UserByName(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.UserByID(ctx, carol.ID+100); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UserByID(unknown) = %v, want ErrNotFound", err)
	}
	list, err := s.ListUsers(ctx)
	if want := []store.User{alice, bob, carol}; err != nil || !reflect.DeepEqual(list, want) {
		t.Errorf("ListUsers = %+v, %v; want %+v", list, err, want)
	}
}

func testTokens(t *testing.T, ctx context.Context, s store.Store) {
	u := mustUser(t, ctx, s, "alice")
	expires := time.Now().Add(time.Hour).Truncate(time.Microsecond).UTC()
	tok := store.Token{UserID: u.ID, Name: "laptop", Prefix: "dg_abc", Hash: []byte{0, 1, 2, 0xff}, ExpiresAt: expires}
	if err := s.CreateToken(ctx, &tok); err != nil {
		t.Fatal(err)
	}
	if tok.ID == 0 || tok.CreatedAt.IsZero() {
		t.Fatalf("CreateToken left ID or CreatedAt unset: %+v", tok)
	}
	gotT, gotU, err := s.TokenByHash(ctx, []byte{0, 1, 2, 0xff})
	if err != nil || !reflect.DeepEqual(gotT, tok) || !reflect.DeepEqual(gotU, u) {
		t.Errorf("TokenByHash = %+v, %+v, %v; want %+v, %+v", gotT, gotU, err, tok, u)
	}
	if !gotT.RevokedAt.IsZero() || !gotT.ExpiresAt.Equal(expires) {
		t.Errorf("TokenByHash times = expires %v, revoked %v; want %v, zero", gotT.ExpiresAt, gotT.RevokedAt, expires)
	}
	if _, _, err := s.TokenByHash(ctx, []byte{0, 1, 2}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TokenByHash(unknown) = %v, want ErrNotFound", err)
	}
	if err := s.CreateToken(ctx, &store.Token{UserID: u.ID, Name: "again", Hash: tok.Hash}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateToken(same hash) = %v, want ErrConflict", err)
	}
	if err := s.CreateToken(ctx, &store.Token{UserID: u.ID + 100, Name: "ghost", Hash: []byte("x")}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateToken(unknown user) = %v, want ErrNotFound", err)
	}
}

func testProjects(t *testing.T, ctx context.Context, s store.Store) {
	ml := store.Project{Name: "ml", Settings: sdk.ProjectSettings{GPUEnabled: ptr(true), DetachGrace: ptr(sdk.Duration(90 * time.Second))}}
	if err := s.CreateProject(ctx, &ml); err != nil {
		t.Fatal(err)
	}
	if ml.ID == 0 || ml.CreatedAt.IsZero() || !ml.UpdatedAt.Equal(ml.CreatedAt) {
		t.Fatalf("CreateProject left ID or times unset: %+v", ml)
	}
	def := mustProject(t, ctx, s, "default")
	if err := s.CreateProject(ctx, &store.Project{Name: "ml"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateProject(duplicate) = %v, want ErrConflict", err)
	}
	got, err := s.ProjectByName(ctx, "ml")
	if err != nil || !reflect.DeepEqual(got, ml) {
		t.Errorf("ProjectByName = %+v, %v; want %+v", got, err, ml)
	}
	if _, err := s.ProjectByName(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ProjectByName(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.ProjectByID(ctx, ml.ID+def.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ProjectByID(unknown) = %v, want ErrNotFound", err)
	}

	time.Sleep(time.Millisecond) // so that UpdatedAt moves
	upd := ml
	upd.Name, upd.Settings = "ml-research", sdk.ProjectSettings{GPUEnabled: ptr(false), MaxGPUs: ptr(4)}
	if err := s.UpdateProject(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	if !upd.UpdatedAt.After(ml.UpdatedAt) || !upd.CreatedAt.Equal(ml.CreatedAt) {
		t.Errorf("UpdateProject times: created %v updated %v, was %v %v", upd.CreatedAt, upd.UpdatedAt, ml.CreatedAt, ml.UpdatedAt)
	}
	got, err = s.ProjectByID(ctx, ml.ID)
	if err != nil || !reflect.DeepEqual(got, upd) {
		t.Errorf("ProjectByID after update = %+v, %v; want %+v", got, err, upd)
	}
	taken := upd
	taken.Name = "default"
	if err := s.UpdateProject(ctx, &taken); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateProject(taken name) = %v, want ErrConflict", err)
	}
	ghost := store.Project{ID: ml.ID + def.ID, Name: "ghost"}
	if err := s.UpdateProject(ctx, &ghost); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateProject(unknown) = %v, want ErrNotFound", err)
	}
	list, err := s.ListProjects(ctx)
	if want := []store.Project{def, upd}; err != nil || !reflect.DeepEqual(list, want) {
		t.Errorf("ListProjects = %+v, %v; want %+v", list, err, want)
	}
}

func testDeleteProject(t *testing.T, ctx context.Context, s store.Store) {
	u := mustUser(t, ctx, s, "alice")
	p := mustProject(t, ctx, s, "ml")
	if err := s.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleDeveloper}); err != nil {
		t.Fatal(err)
	}
	sess := mustSession(t, ctx, s, "s1", p, u, 1)
	if err := s.DeleteProject(ctx, p.ID); !errors.Is(err, store.ErrConflict) {
		t.Errorf("DeleteProject(active session) = %v, want ErrConflict", err)
	}
	mustEnd(t, ctx, s, sess.ID)
	if err := s.DeleteProject(ctx, p.ID); err != nil {
		t.Fatalf("DeleteProject = %v", err)
	}
	if _, err := s.ProjectByID(ctx, p.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ProjectByID(deleted) = %v, want ErrNotFound", err)
	}
	if _, err := s.MemberRole(ctx, p.ID, u.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("MemberRole(deleted project) = %v, want ErrNotFound", err)
	}
	if _, err := s.Session(ctx, sess.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Session(of deleted project) = %v, want ErrNotFound", err)
	}
	if err := s.DeleteProject(ctx, p.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteProject(again) = %v, want ErrNotFound", err)
	}
	// The name is free again.
	mustProject(t, ctx, s, "ml")
}

func testMembers(t *testing.T, ctx context.Context, s store.Store) {
	bob, alice := mustUser(t, ctx, s, "bob"), mustUser(t, ctx, s, "alice")
	p, other := mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "other")
	for _, m := range []store.Member{
		{ProjectID: p.ID, UserID: bob.ID, Role: store.RoleDeveloper},
		{ProjectID: p.ID, UserID: alice.ID, Role: store.RoleDeveloper},
		{ProjectID: p.ID, UserID: alice.ID, Role: store.RoleAdmin}, // a change of role
		{ProjectID: other.ID, UserID: bob.ID, Role: store.RoleAdmin},
	} {
		if err := s.SetMember(ctx, m); err != nil {
			t.Fatalf("SetMember(%+v) = %v", m, err)
		}
	}
	if role, err := s.MemberRole(ctx, p.ID, alice.ID); err != nil || role != store.RoleAdmin {
		t.Errorf("MemberRole = %q, %v; want admin", role, err)
	}
	if _, err := s.MemberRole(ctx, other.ID, alice.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("MemberRole(not a member) = %v, want ErrNotFound", err)
	}
	list, err := s.ListMembers(ctx, p.ID)
	want := []store.Member{
		{ProjectID: p.ID, Project: "ml", UserID: alice.ID, User: "alice", Role: store.RoleAdmin},
		{ProjectID: p.ID, Project: "ml", UserID: bob.ID, User: "bob", Role: store.RoleDeveloper},
	}
	if err != nil || !reflect.DeepEqual(list, want) {
		t.Errorf("ListMembers = %+v, %v; want %+v", list, err, want)
	}
	if err := s.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: bob.ID, Role: "owner"}); err == nil {
		t.Error("SetMember(unknown role) succeeded")
	}
	if err := s.SetMember(ctx, store.Member{ProjectID: p.ID + other.ID, UserID: bob.ID, Role: store.RoleAdmin}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetMember(unknown project) = %v, want ErrNotFound", err)
	}
	if err := s.RemoveMember(ctx, p.ID, bob.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveMember(ctx, p.ID, bob.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RemoveMember(again) = %v, want ErrNotFound", err)
	}
	if role, err := s.MemberRole(ctx, other.ID, bob.ID); err != nil || role != store.RoleAdmin {
		t.Errorf("MemberRole(other project) = %q, %v; want admin", role, err)
	}
}

func testSessions(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC)
	in := store.Session{
		ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting, GPUType: "t4", Region: "local",
		Backend: "local", GPUCount: 2, GPUs: []string{"GPU-sim-t4-1", "GPU-sim-t4-0"}, Node: "host", Handle: "devgpu-s1",
		Attachments: 1, DetachGrace: 2 * time.Minute, CreatedAt: at, LastSeenAt: at.Add(time.Second),
	}
	x := in
	if err := s.CreateSession(ctx, &x); err != nil {
		t.Fatal(err)
	}
	want := in
	want.Project, want.User = "ml", "alice"
	got, err := s.Session(ctx, "s1")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Session =\n%+v, %v; want\n%+v", got, err, want)
	}
	if err := s.CreateSession(ctx, &store.Session{ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateSession(duplicate) = %v, want ErrConflict", err)
	}
	if err := s.CreateSession(ctx, &store.Session{ID: "s2", ProjectID: p.ID + 100, UserID: u.ID, State: sdk.StateStarting}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateSession(unknown project) = %v, want ErrNotFound", err)
	}
	if _, err := s.Session(ctx, "s2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Session(unknown) = %v, want ErrNotFound", err)
	}

	// UpdateSession writes its fields and no others.
	upd := got
	upd.StartedAt, upd.Attachments, upd.DetachedAt = at.Add(2*time.Second), 0, at.Add(3*time.Second)
	upd.LastSeenAt, upd.Error = at.Add(4*time.Second), "warning"
	upd.GPUs, upd.Node, upd.Handle = []string{"GPU-sim-t4-2"}, "node-2", "devgpu-s1-b"
	ignored := upd
	ignored.GPUType, ignored.Region, ignored.DetachGrace, ignored.EndReason = "a100", "eu", 0, "x"
	ignored.Backend, ignored.GPUCount = "west", 8
	ignored.EndActor, ignored.EndState, ignored.EndedAt = "bob", sdk.StateFailed, at
	if err := s.UpdateSession(ctx, &ignored); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Session(ctx, "s1"); err != nil || !reflect.DeepEqual(got, upd) {
		t.Errorf("Session after update =\n%+v, %v; want\n%+v", got, err, upd)
	}
	// Empty GPUs leave the devices recorded; a device twice is refused.
	upd.GPUs = nil
	if err := s.UpdateSession(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	upd.GPUs = []string{"GPU-sim-t4-2"}
	twice := upd
	twice.GPUs, twice.Error = []string{"GPU-sim-t4-3", "GPU-sim-t4-3"}, "twice"
	if err := s.UpdateSession(ctx, &twice); err == nil {
		t.Errorf("UpdateSession(a device twice) succeeded")
	}
	if got, err := s.Session(ctx, "s1"); err != nil || !reflect.DeepEqual(got, upd) {
		t.Errorf("Session after updates without GPUs and with one twice =\n%+v, %v; want\n%+v", got, err, upd)
	}
	// It never changes the state: that is TransitionSession's.
	moved := upd
	moved.State = sdk.StateRunning
	if err := s.UpdateSession(ctx, &moved); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateSession(starting session as running) = %v, want ErrConflict", err)
	}
	if got := mustGet(t, ctx, s, "s1"); got.State != sdk.StateStarting {
		t.Errorf("state after a refused update = %s, want starting", got.State)
	}
	if err := s.UpdateSession(ctx, &store.Session{ID: "s2", State: sdk.StateRunning}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateSession(unknown) = %v, want ErrNotFound", err)
	}
	if err := s.UpdateSession(ctx, &store.Session{ID: "s1", State: sdk.StateEnded}); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateSession(state ended) = %v, want a refusal", err)
	}

	// A session may be created before the engine gave it devices (queued).
	q := store.Session{ID: "s0", ProjectID: p.ID, UserID: u.ID, State: sdk.StateQueued, GPUType: "t4", Region: "local", GPUCount: 1}
	if err := s.CreateSession(ctx, &q); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s0"); got.GPUs != nil || got.CreatedAt.IsZero() || got.GPUCount != 1 {
		t.Errorf("queued session: GPUs %v, CreatedAt %v, GPUCount %d; want none, set, 1", got.GPUs, got.CreatedAt, got.GPUCount)
	}
	for _, bad := range []store.Session{
		{ID: "s3", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting, GPUCount: -1},
		{ID: "s3", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting, GPUCount: 2, GPUs: []string{"g", "g"}},
		{ID: "s3", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting, GPUCount: 1, GPUs: []string{""}},
	} {
		if err := s.CreateSession(ctx, &bad); err == nil {
			t.Errorf("CreateSession(GPUCount %d, GPUs %q) succeeded", bad.GPUCount, bad.GPUs)
		}
	}
	if _, err := s.Session(ctx, "s3"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Session(refused) = %v, want ErrNotFound", err)
	}
}

func testEndSession(t *testing.T, ctx context.Context, s store.Store) {
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	sess := mustSession(t, ctx, s, "s1", p, u, 2)
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := s.EndSession(ctx, "s1", sdk.StateEnded, sdk.ReasonIdle, at); err != nil {
		t.Fatal(err)
	}
	got := mustGet(t, ctx, s, "s1")
	if got.State != sdk.StateEnded || got.EndReason != sdk.ReasonIdle || !got.EndedAt.Equal(at) || !reflect.DeepEqual(got.GPUs, sess.GPUs) {
		t.Errorf("ended session = %+v", got)
	}
	if list, err := s.ListSessions(ctx, store.SessionFilter{ActiveOnly: true}); err != nil || len(list) != 0 {
		t.Errorf("active sessions after the end = %+v, %v; want none", list, err)
	}
	// Ending again changes nothing.
	if err := s.EndSession(ctx, "s1", sdk.StateFailed, sdk.ReasonLost, at.Add(time.Hour)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("EndSession(again) = %v, want ErrConflict", err)
	}
	if again := mustGet(t, ctx, s, "s1"); !reflect.DeepEqual(again, got) {
		t.Errorf("session after a second end = %+v, want %+v", again, got)
	}
	if err := s.UpdateSession(ctx, &store.Session{ID: "s1", State: sdk.StateRunning}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateSession(ended) = %v, want ErrConflict", err)
	}
	if err := s.EndSession(ctx, "s9", sdk.StateEnded, sdk.ReasonClosed, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EndSession(unknown) = %v, want ErrNotFound", err)
	}
	// The devices serve the next session, and the ended one still reports them.
	mustSession(t, ctx, s, "s2", p, u, 2)
	if got := mustGet(t, ctx, s, "s1").GPUs; !reflect.DeepEqual(got, sess.GPUs) {
		t.Errorf("GPUs of s1 = %v, want %v", got, sess.GPUs)
	}
	if err := s.EndSession(ctx, "s2", sdk.StateFailed, sdk.ReasonError, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s2"); got.State != sdk.StateFailed || got.EndReason != sdk.ReasonError || got.EndedAt.IsZero() {
		t.Errorf("failed session = %+v, want failed, error, ended now", got)
	}
	if err := s.EndSession(ctx, "s2", sdk.StateRunning, "", at); err == nil || errors.Is(err, store.ErrConflict) {
		t.Errorf("EndSession(state running) = %v, want a refusal", err)
	}
}

func testListSessions(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	ml, cv := mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "cv")
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	// Created out of order; "b" and "c" at the same time sort by ID.
	for _, c := range []struct {
		id      string
		p       store.Project
		u       store.User
		created time.Time
	}{
		{"c", ml, alice, at.Add(time.Second)},
		{"a", cv, bob, at.Add(2 * time.Second)},
		{"b", ml, bob, at.Add(time.Second)},
		{"d", ml, alice, at},
	} {
		x := store.Session{ID: c.id, ProjectID: c.p.ID, UserID: c.u.ID, State: sdk.StateRunning, GPUType: "t4", Region: "local",
			GPUCount: 1, GPUs: devices(c.id, 1), CreatedAt: c.created}
		if err := s.CreateSession(ctx, &x); err != nil {
			t.Fatal(err)
		}
	}
	mustEnd(t, ctx, s, "c")
	for _, c := range []struct {
		f    store.SessionFilter
		want []string
	}{
		{store.SessionFilter{}, []string{"d", "b", "c", "a"}},
		{store.SessionFilter{UserID: alice.ID}, []string{"d", "c"}},
		{store.SessionFilter{ProjectID: ml.ID}, []string{"d", "b", "c"}},
		{store.SessionFilter{ActiveOnly: true}, []string{"d", "b", "a"}},
		{store.SessionFilter{UserID: bob.ID, ProjectID: ml.ID, ActiveOnly: true}, []string{"b"}},
		{store.SessionFilter{UserID: alice.ID, ProjectID: cv.ID}, nil},
	} {
		list, err := s.ListSessions(ctx, c.f)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, x := range list {
			ids = append(ids, x.ID)
			if one := mustGet(t, ctx, s, x.ID); !reflect.DeepEqual(one, x) {
				t.Errorf("ListSessions(%+v) has %+v; Session says %+v", c.f, x, one)
			}
			if !reflect.DeepEqual(x.GPUs, devices(x.ID, 1)) || x.Project == "" || x.User == "" {
				t.Errorf("ListSessions(%+v) has %+v, want GPUs and names filled", c.f, x)
			}
		}
		if !reflect.DeepEqual(ids, c.want) {
			t.Errorf("ListSessions(%+v) = %v, want %v", c.f, ids, c.want)
		}
	}
}

func testTimes(t *testing.T, ctx context.Context, s store.Store) {
	zone := time.FixedZone("UTC+5", 5*3600)
	in := time.Date(2025, 6, 1, 17, 30, 0, 123456789, zone)
	u := store.User{Name: "alice", CreatedAt: in}
	if err := s.CreateUser(ctx, &u); err != nil {
		t.Fatal(err)
	}
	got, err := s.UserByID(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Microseconds, in UTC, and CreateUser already says so.
	want := time.Date(2025, 6, 1, 12, 30, 0, 123456000, time.UTC)
	if got.CreatedAt != want || u.CreatedAt != want {
		t.Errorf("CreatedAt read %v, returned %v; want %v", got.CreatedAt, u.CreatedAt, want)
	}
	// Zero stays zero, and a time before 1970 survives.
	old := time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
	tok := store.Token{UserID: u.ID, Hash: []byte("h"), ExpiresAt: old}
	if err := s.CreateToken(ctx, &tok); err != nil {
		t.Fatal(err)
	}
	if gotT, _, err := s.TokenByHash(ctx, []byte("h")); err != nil || !gotT.RevokedAt.IsZero() || gotT.ExpiresAt != old {
		t.Errorf("TokenByHash = %+v, %v; want RevokedAt zero, ExpiresAt %v", gotT, err, old)
	}
}

func testInTx(t *testing.T, ctx context.Context, s store.Store) {
	var id int64
	err := s.InTx(ctx, func(tx store.Store) error {
		u := store.User{Name: "alice"}
		if err := tx.CreateUser(ctx, &u); err != nil {
			return err
		}
		id = u.ID
		// The transaction reads its own writes.
		_, err := tx.UserByID(ctx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UserByID(ctx, id); err != nil {
		t.Errorf("UserByID after commit = %v", err)
	}

	// A panic rolls back and lets the next transaction in.
	func() {
		defer func() { _ = recover() }()
		_ = s.InTx(ctx, func(tx store.Store) error {
			if err := tx.CreateUser(ctx, &store.User{Name: "bob"}); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if _, err := s.UserByName(ctx, "bob"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UserByName after a panic = %v, want ErrNotFound", err)
	}
	if err := s.InTx(ctx, func(tx store.Store) error { return tx.CreateUser(ctx, &store.User{Name: "bob"}) }); err != nil {
		t.Errorf("InTx after a panic = %v", err)
	}
}

func testInTxRollback(t *testing.T, ctx context.Context, s store.Store) {
	p := mustProject(t, ctx, s, "ml")
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Store) error {
		u := store.User{Name: "alice"}
		if err := tx.CreateUser(ctx, &u); err != nil {
			return err
		}
		if err := tx.SetCapacity(ctx, "local", []store.Capacity{{Type: "t4", Region: "local", Total: 1}}); err != nil {
			return err
		}
		x := store.Session{ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateStarting, GPUCount: 1, GPUs: devices("s1", 1)}
		if err := tx.CreateSession(ctx, &x); err != nil {
			return err
		}
		// A failed write does not end the transaction early, on any engine.
		if err := tx.CreateProject(ctx, &store.Project{Name: "ml"}); !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("CreateProject(duplicate) = %v, want ErrConflict", err)
		}
		if err := tx.CreateToken(ctx, &store.Token{UserID: u.ID + 100, Hash: []byte("h")}); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("CreateToken(unknown user) = %v, want ErrNotFound", err)
		}
		if err := tx.SetMember(ctx, store.Member{ProjectID: p.ID, UserID: u.ID, Role: store.RoleAdmin}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want the error of fn", err)
	}
	if _, err := s.UserByName(ctx, "alice"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("user after rollback: %v, want ErrNotFound", err)
	}
	if _, err := s.Session(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session after rollback: %v, want ErrNotFound", err)
	}
	if list, err := s.ListCapacity(ctx); err != nil || len(list) != 0 {
		t.Errorf("capacity after rollback = %+v, %v; want none", list, err)
	}
	// Nothing of s1 was kept: created again without devices, it has none.
	u := mustUser(t, ctx, s, "alice")
	if err := s.CreateSession(ctx, &store.Session{ID: "s1", ProjectID: p.ID, UserID: u.ID, State: sdk.StateQueued}); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, ctx, s, "s1"); got.GPUs != nil || got.GPUCount != 0 {
		t.Errorf("session created again after rollback = %+v, want no devices", got)
	}
	if list, _ := s.ListMembers(ctx, p.ID); len(list) != 0 {
		t.Errorf("members after rollback = %+v, want none", list)
	}
}

func testNestedInTx(t *testing.T, ctx context.Context, s store.Store) {
	boom := errors.New("boom")
	err := s.InTx(ctx, func(outer store.Store) error {
		if err := outer.CreateUser(ctx, &store.User{Name: "alice"}); err != nil {
			return err
		}
		err := outer.InTx(ctx, func(inner store.Store) error {
			// The same transaction: the outer write is visible, and with
			// one that serialises, a second would wait for the first forever.
			if _, err := inner.UserByName(ctx, "alice"); err != nil {
				return err
			}
			return inner.CreateUser(ctx, &store.User{Name: "bob"})
		})
		if err != nil {
			return err
		}
		if _, err := outer.UserByName(ctx, "bob"); err != nil {
			return err
		}
		if err := outer.InTx(ctx, func(inner store.Store) error { return boom }); !errors.Is(err, boom) {
			return fmt.Errorf("nested InTx = %v, want boom", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListUsers(ctx); err != nil || len(list) != 2 {
		t.Errorf("ListUsers after nested commit = %+v, %v; want alice and bob", list, err)
	}

	// An inner failure returned by the outer fn rolls back everything.
	err = s.InTx(ctx, func(outer store.Store) error {
		if err := outer.CreateUser(ctx, &store.User{Name: "carol"}); err != nil {
			return err
		}
		return outer.InTx(ctx, func(inner store.Store) error {
			if err := inner.CreateUser(ctx, &store.User{Name: "dave"}); err != nil {
				return err
			}
			return boom
		})
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	for _, name := range []string{"carol", "dave"} {
		if _, err := s.UserByName(ctx, name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UserByName(%s) after rollback = %v, want ErrNotFound", name, err)
		}
	}
}

// testConcurrentAdmission runs many admissions at once against a capacity
// of 4 GPUs, each an InTx that, as the server does, reads the capacity and
// the active sessions, refuses when their GPUCount leaves no room, gives
// the session a device no active session holds (as a runtime of one host
// does) and creates it. It checks that no more than 4 sessions are ever
// active and that no device is given twice. With countCap, each admission
// also refuses when the count of active sessions reaches 3, a cap that
// holds only if InTx serialises.
func testConcurrentAdmission(t *testing.T, s store.Store, countCap bool) {
	const gpuCount, workers, rounds, limit = 4, 50, 4, 3
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	u, p := mustUser(t, ctx, s, "alice"), mustProject(t, ctx, s, "ml")
	if err := s.SetCapacity(ctx, "local", []store.Capacity{{Type: "t4", Region: "local", Total: gpuCount}}); err != nil {
		t.Fatal(err)
	}
	capacity := gpuCount
	if countCap {
		capacity = limit
	}
	errCap, errFull := errors.New("project cap reached"), errors.New("no free GPU")

	var admitted, refused atomic.Int64
	var mu sync.Mutex
	held := make(map[string]string) // device -> the session the test saw it given to
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*3)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				id := fmt.Sprintf("s-%02d-%d", w, r)
				var gpu string
				err := s.InTx(ctx, func(tx store.Store) error {
					caps, err := tx.ListCapacity(ctx)
					if err != nil {
						return err
					}
					active, err := tx.ListSessions(ctx, store.SessionFilter{ActiveOnly: true})
					if err != nil {
						return err
					}
					if countCap && len(active) >= limit {
						return errCap
					}
					total, used, busy := 0, 0, make(map[string]bool)
					for _, c := range caps {
						if c.Backend == "local" && c.Type == "t4" && c.Region == "local" {
							total += c.Total
						}
					}
					for _, x := range active {
						used += x.GPUCount
						for _, g := range x.GPUs {
							busy[g] = true
						}
					}
					if used+1 > total {
						return errFull
					}
					for i := range total {
						if g := fmt.Sprintf("GPU-sim-t4-%d", i); !busy[g] {
							gpu = g
							break
						}
					}
					if gpu == "" {
						return fmt.Errorf("%d of %d GPUs counted, but every device is held: %w", used, total, errBug)
					}
					x := store.Session{ID: id, ProjectID: p.ID, UserID: u.ID, State: sdk.StateRunning, GPUType: "t4", Region: "local",
						Backend: "local", GPUCount: 1, GPUs: []string{gpu}}
					return tx.CreateSession(ctx, &x)
				})
				switch {
				case errors.Is(err, errFull) && !countCap, errors.Is(err, errCap):
					refused.Add(1)
					continue
				case err != nil:
					errs <- fmt.Errorf("admit %s: %w", id, err)
					return
				}
				admitted.Add(1)
				// held never has more sessions than are active: one joins
				// after its commit and leaves before its end.
				mu.Lock()
				if len(held) >= capacity {
					errs <- fmt.Errorf("%d sessions active at once, cap %d", len(held)+1, capacity)
				}
				if other, ok := held[gpu]; ok {
					errs <- fmt.Errorf("%s given to both %s and %s", gpu, other, id)
				}
				held[gpu] = id
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // hold the device a while, so that admissions overlap
				mu.Lock()
				delete(held, gpu)
				mu.Unlock()
				if err := s.EndSession(ctx, id, sdk.StateEnded, sdk.ReasonClosed, time.Now()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if admitted.Load() == 0 || refused.Load() == 0 {
		t.Errorf("%d admitted, %d refused; want some of each", admitted.Load(), refused.Load())
	}
	list, err := s.ListSessions(ctx, store.SessionFilter{})
	if err != nil || int64(len(list)) != admitted.Load() {
		t.Errorf("ListSessions = %d sessions, %v; want %d", len(list), err, admitted.Load())
	}
	for _, x := range list {
		if x.State != sdk.StateEnded || len(x.GPUs) != 1 || x.GPUCount != 1 {
			t.Errorf("session %s: state %s, GPUs %v, GPUCount %d; want ended with one", x.ID, x.State, x.GPUs, x.GPUCount)
		}
	}
	t.Logf("%d admitted, %d refused", admitted.Load(), refused.Load())
}

// errBug marks what only a broken store can cause.
var errBug = errors.New("the store broke an invariant")

// devices names n devices of session id, as a runtime might report them.
func devices(id string, n int) []string {
	var ds []string
	for i := range n {
		ds = append(ds, fmt.Sprintf("GPU-%s-%d", id, i))
	}
	return ds
}

func mustUser(t *testing.T, ctx context.Context, s store.Store, name string) store.User {
	t.Helper()
	u := store.User{Name: name}
	if err := s.CreateUser(ctx, &u); err != nil {
		t.Fatal(err)
	}
	return u
}

func mustProject(t *testing.T, ctx context.Context, s store.Store, name string) store.Project {
	t.Helper()
	p := store.Project{Name: name, Settings: sdk.ProjectSettings{GPUEnabled: ptr(true)}}
	if err := s.CreateProject(ctx, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustSession creates a running session of n t4 GPUs in region local on
// backend local, with the devices devices(id, n), as admission and then a
// runtime's start would record it.
func mustSession(t *testing.T, ctx context.Context, s store.Store, id string, p store.Project, u store.User, n int) store.Session {
	t.Helper()
	x := store.Session{ID: id, ProjectID: p.ID, UserID: u.ID, State: sdk.StateRunning, GPUType: "t4", Region: "local",
		Backend: "local", GPUCount: n, GPUs: devices(id, n)}
	if err := s.CreateSession(ctx, &x); err != nil {
		t.Fatal(err)
	}
	return x
}

func mustGet(t *testing.T, ctx context.Context, s store.Store, id string) store.Session {
	t.Helper()
	x, err := s.Session(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func mustEnd(t *testing.T, ctx context.Context, s store.Store, id string) {
	t.Helper()
	if err := s.EndSession(ctx, id, sdk.StateEnded, sdk.ReasonClosed, time.Now()); err != nil {
		t.Fatal(err)
	}
}
