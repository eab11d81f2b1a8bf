package storetest

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// testUpdateUser: UpdateUser writes every changeable field of a user, and
// only that user's; CreateUser writes them too; an unknown user is
// ErrNotFound.
func testUpdateUser(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	robot := store.User{Name: "ci", ServiceAccount: true, Subject: "sub-ci", OrgAdmin: true, OrgAdminFromGroups: true}
	if err := s.CreateUser(ctx, &robot); err != nil {
		t.Fatal(err)
	}
	if got, err := s.UserByID(ctx, robot.ID); err != nil || !reflect.DeepEqual(got, robot) {
		t.Errorf("UserByID after CreateUser = %+v, %v; want %+v", got, err, robot)
	}

	changed := alice
	changed.OrgAdmin, changed.Disabled, changed.ServiceAccount = true, true, true
	changed.Subject, changed.OrgAdminFromGroups = "00u1a2b3c4-subject", true
	// Name and creation time never change, whatever the caller passes.
	in := changed
	in.Name, in.CreatedAt = "mallory", time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := s.UpdateUser(ctx, in); err != nil {
		t.Fatal(err)
	}
	if got, err := s.UserByName(ctx, "alice"); err != nil || !reflect.DeepEqual(got, changed) {
		t.Errorf("UserByName after UpdateUser = %+v, %v; want %+v", got, err, changed)
	}
	if got, err := s.UserByID(ctx, bob.ID); err != nil || !reflect.DeepEqual(got, bob) {
		t.Errorf("another user after UpdateUser = %+v, %v; want unchanged %+v", got, err, bob)
	}
	tok := store.Token{UserID: alice.ID, Name: "t", Prefix: "dg_t", Hash: []byte("alice-token")}
	if err := s.CreateToken(ctx, &tok); err != nil {
		t.Fatal(err)
	}
	if _, got, err := s.TokenByHash(ctx, tok.Hash); err != nil || !reflect.DeepEqual(got, changed) {
		t.Errorf("TokenByHash's user = %+v, %v; want %+v", got, err, changed)
	}
	// And back: every field can be cleared again.
	if err := s.UpdateUser(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListUsers(ctx); err != nil || !reflect.DeepEqual(list, []store.User{alice, bob, robot}) {
		t.Errorf("ListUsers after clearing = %+v, %v; want %+v", list, err, []store.User{alice, bob, robot})
	}
	if err := s.UpdateUser(ctx, store.User{ID: alice.ID + bob.ID + robot.ID, Subject: "x"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateUser(unknown) = %v, want ErrNotFound", err)
	}
}

// testTokenMethod: a token keeps how it was obtained; API tokens are the
// default.
func testTokenMethod(t *testing.T, ctx context.Context, s store.Store) {
	u := mustUser(t, ctx, s, "alice")
	api := store.Token{UserID: u.ID, Name: "laptop", Prefix: "dg_api", Hash: []byte("api")}
	sso := store.Token{UserID: u.ID, Name: "sso", Prefix: "dg_sso", Hash: []byte("sso"), Method: store.TokenMethodSSO,
		ExpiresAt: time.Now().Add(8 * time.Hour)}
	for _, tok := range []*store.Token{&api, &sso} {
		if err := s.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if got, _, err := s.TokenByHash(ctx, []byte("sso")); err != nil || !reflect.DeepEqual(got, sso) {
		t.Errorf("TokenByHash = %+v, %v; want %+v", got, err, sso)
	}
	if got, err := s.TokenByID(ctx, api.ID); err != nil || got.Method != store.TokenMethodAPI {
		t.Errorf("TokenByID = %+v, %v; want method %q", got, err, store.TokenMethodAPI)
	}
	if list, err := s.ListTokens(ctx, u.ID); err != nil || !reflect.DeepEqual(list, []store.Token{api, sso}) {
		t.Errorf("ListTokens = %+v, %v; want %+v", list, err, []store.Token{api, sso})
	}
}

// testMemberSource: a membership keeps who made it; setting it again
// overwrites role and source (a hand-set one becomes hand-made); an
// unknown source is refused; ListUserMembers lists a user's memberships
// by project name with both names filled.
func testMemberSource(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	// Created out of name order.
	zeta, ml, alpha := mustProject(t, ctx, s, "zeta"), mustProject(t, ctx, s, "ml"), mustProject(t, ctx, s, "alpha")
	for _, m := range []store.Member{
		{ProjectID: zeta.ID, UserID: alice.ID, Role: store.RoleDeveloper, Source: store.MemberSourceGroup},
		{ProjectID: ml.ID, UserID: alice.ID, Role: store.RoleDeveloper, Source: store.MemberSourceGroup},
		{ProjectID: alpha.ID, UserID: alice.ID, Role: store.RoleAdmin},
		{ProjectID: ml.ID, UserID: bob.ID, Role: store.RoleAdmin, Source: store.MemberSourceGroup},
	} {
		if err := s.SetMember(ctx, m); err != nil {
			t.Fatalf("SetMember(%+v) = %v", m, err)
		}
	}
	list, err := s.ListUserMembers(ctx, alice.ID)
	want := []store.Member{
		{ProjectID: alpha.ID, Project: "alpha", UserID: alice.ID, User: "alice", Role: store.RoleAdmin},
		{ProjectID: ml.ID, Project: "ml", UserID: alice.ID, User: "alice", Role: store.RoleDeveloper, Source: store.MemberSourceGroup},
		{ProjectID: zeta.ID, Project: "zeta", UserID: alice.ID, User: "alice", Role: store.RoleDeveloper, Source: store.MemberSourceGroup},
	}
	if err != nil || !reflect.DeepEqual(list, want) {
		t.Errorf("ListUserMembers =\n%+v, %v; want\n%+v", list, err, want)
	}

	// Set by hand: the group-made membership becomes a hand-made one.
	if err := s.SetMember(ctx, store.Member{ProjectID: ml.ID, UserID: alice.ID, Role: store.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	list, err = s.ListMembers(ctx, ml.ID)
	want = []store.Member{
		{ProjectID: ml.ID, Project: "ml", UserID: alice.ID, User: "alice", Role: store.RoleAdmin},
		{ProjectID: ml.ID, Project: "ml", UserID: bob.ID, User: "bob", Role: store.RoleAdmin, Source: store.MemberSourceGroup},
	}
	if err != nil || !reflect.DeepEqual(list, want) {
		t.Errorf("ListMembers after a hand-set =\n%+v, %v; want\n%+v", list, err, want)
	}
	// And a group mapping may take a hand-made one over when asked to.
	if err := s.SetMember(ctx, store.Member{ProjectID: alpha.ID, UserID: alice.ID, Role: store.RoleDeveloper,
		Source: store.MemberSourceGroup}); err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListMembers(ctx, alpha.ID); err != nil || len(list) != 1 || list[0].Source != store.MemberSourceGroup ||
		list[0].Role != store.RoleDeveloper {
		t.Errorf("ListMembers = %+v, %v; want alice a developer by group", list, err)
	}
	if err := s.SetMember(ctx, store.Member{ProjectID: ml.ID, UserID: bob.ID, Role: store.RoleAdmin, Source: "scim"}); err == nil {
		t.Error("SetMember(unknown source) succeeded")
	}
	if role, err := s.MemberRole(ctx, ml.ID, bob.ID); err != nil || role != store.RoleAdmin {
		t.Errorf("MemberRole after a refused SetMember = %q, %v; want admin", role, err)
	}

	if err := s.RemoveMember(ctx, zeta.ID, alice.ID); err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListUserMembers(ctx, alice.ID); err != nil || len(list) != 2 || list[0].Project != "alpha" || list[1].Project != "ml" {
		t.Errorf("ListUserMembers after a removal = %+v, %v; want alpha, ml", list, err)
	}
	carol := mustUser(t, ctx, s, "carol")
	if list, err := s.ListUserMembers(ctx, carol.ID); err != nil || len(list) != 0 {
		t.Errorf("ListUserMembers(no memberships) = %+v, %v; want none", list, err)
	}
}

// testSSOLogins: a login reads back as written, by its refresh hash and by
// its token, ended or not; an update writes what renewals and re-checks
// change; refresh hashes are unique; the list is by id, the active one
// without ended logins.
func testSSOLogins(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	token := func(u store.User, name string) store.Token {
		t.Helper()
		tok := store.Token{UserID: u.ID, Name: name, Prefix: "dg_" + name, Hash: []byte(name), Method: store.TokenMethodSSO}
		if err := s.CreateToken(ctx, &tok); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	at := time.Date(2025, 6, 1, 12, 0, 0, 123456000, time.UTC)
	t1, t2 := token(alice, "a1"), token(bob, "b1")
	first := store.SSOLogin{UserID: alice.ID, TokenID: t1.ID, RefreshHash: []byte{0, 1, 2, 0xff},
		ProviderRefresh: []byte("sealed\x00refresh"), Groups: []string{"gpu-users", "ml-admins"}, Flow: "browser",
		CreatedAt: at, CheckedAt: at.Add(time.Minute)}
	x := first
	if err := s.CreateSSOLogin(ctx, &x); err != nil {
		t.Fatal(err)
	}
	if x.ID == 0 {
		t.Fatalf("CreateSSOLogin left ID unset: %+v", x)
	}
	want := first
	want.ID = x.ID
	if !reflect.DeepEqual(x, want) {
		t.Errorf("CreateSSOLogin set %+v; want %+v", x, want)
	}
	// Defaults: now, checked when created, no groups.
	before := time.Now().Add(-time.Second)
	second := store.SSOLogin{UserID: bob.ID, TokenID: t2.ID, RefreshHash: []byte("bob-refresh"),
		ProviderRefresh: []byte("sealed-bob"), Groups: []string{}, Flow: "device"}
	if err := s.CreateSSOLogin(ctx, &second); err != nil {
		t.Fatal(err)
	}
	if second.CreatedAt.Before(before) || !second.CheckedAt.Equal(second.CreatedAt) || second.Groups != nil {
		t.Errorf("CreateSSOLogin with defaults set %+v; want CreatedAt now, CheckedAt = CreatedAt, Groups nil", second)
	}

	if got, err := s.SSOLoginByRefreshHash(ctx, []byte{0, 1, 2, 0xff}); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("SSOLoginByRefreshHash =\n%+v, %v; want\n%+v", got, err, want)
	}
	if got, err := s.SSOLoginByToken(ctx, t2.ID); err != nil || !reflect.DeepEqual(got, second) {
		t.Errorf("SSOLoginByToken =\n%+v, %v; want\n%+v", got, err, second)
	}
	if _, err := s.SSOLoginByRefreshHash(ctx, []byte{0, 1, 2}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SSOLoginByRefreshHash(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.SSOLoginByToken(ctx, t1.ID+t2.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SSOLoginByToken(unknown) = %v, want ErrNotFound", err)
	}
	dup := store.SSOLogin{UserID: bob.ID, TokenID: t2.ID, RefreshHash: []byte("bob-refresh"), Flow: "device"}
	if err := s.CreateSSOLogin(ctx, &dup); !errors.Is(err, store.ErrConflict) {
		t.Errorf("CreateSSOLogin(same refresh hash) = %v, want ErrConflict", err)
	}
	if err := s.CreateSSOLogin(ctx, &store.SSOLogin{UserID: alice.ID + bob.ID, RefreshHash: []byte("nobody"), Flow: "device"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateSSOLogin(unknown user) = %v, want ErrNotFound", err)
	}

	// A renewal: a new token and refresh secret, groups re-read.
	t3 := token(alice, "a2")
	renewed := want
	renewed.TokenID, renewed.RefreshHash, renewed.ProviderRefresh = t3.ID, []byte("rotated"), []byte("sealed-rotated")
	renewed.Groups, renewed.CheckedAt = []string{"gpu-users"}, at.Add(time.Hour)
	// The user, flow and creation time stay as they were.
	in := renewed
	in.UserID, in.Flow, in.CreatedAt = bob.ID, "device", at.Add(-time.Hour)
	if err := s.UpdateSSOLogin(ctx, in); err != nil {
		t.Fatal(err)
	}
	if got, err := s.SSOLoginByToken(ctx, t3.ID); err != nil || !reflect.DeepEqual(got, renewed) {
		t.Errorf("SSOLoginByToken after a renewal =\n%+v, %v; want\n%+v", got, err, renewed)
	}
	if got, err := s.SSOLoginByRefreshHash(ctx, []byte("rotated")); err != nil || got.ID != want.ID {
		t.Errorf("SSOLoginByRefreshHash(new secret) = %+v, %v; want login %d", got, err, want.ID)
	}
	if _, err := s.SSOLoginByRefreshHash(ctx, want.RefreshHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SSOLoginByRefreshHash(old secret) = %v, want ErrNotFound", err)
	}
	if _, err := s.SSOLoginByToken(ctx, t1.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SSOLoginByToken(old token) = %v, want ErrNotFound", err)
	}
	taken := second
	taken.RefreshHash = []byte("rotated")
	if err := s.UpdateSSOLogin(ctx, taken); !errors.Is(err, store.ErrConflict) {
		t.Errorf("UpdateSSOLogin(another login's refresh hash) = %v, want ErrConflict", err)
	}
	if err := s.UpdateSSOLogin(ctx, store.SSOLogin{ID: want.ID + second.ID, RefreshHash: []byte("x")}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateSSOLogin(unknown) = %v, want ErrNotFound", err)
	}

	// Bob's login ends: still found, no longer active.
	ended := second
	ended.EndedAt, ended.EndReason = at.Add(2*time.Hour), "removed from the identity provider"
	ended.Groups = nil
	if err := s.UpdateSSOLogin(ctx, ended); err != nil {
		t.Fatal(err)
	}
	if got, err := s.SSOLoginByRefreshHash(ctx, ended.RefreshHash); err != nil || !reflect.DeepEqual(got, ended) {
		t.Errorf("SSOLoginByRefreshHash(ended) =\n%+v, %v; want\n%+v", got, err, ended)
	}
	if got, err := s.SSOLoginByToken(ctx, t2.ID); err != nil || !got.EndedAt.Equal(ended.EndedAt) {
		t.Errorf("SSOLoginByToken(ended) = %+v, %v; want ended at %v", got, err, ended.EndedAt)
	}
	if list, err := s.ListSSOLogins(ctx, false); err != nil || !reflect.DeepEqual(list, []store.SSOLogin{renewed, ended}) {
		t.Errorf("ListSSOLogins(all) =\n%+v, %v; want\n%+v", list, err, []store.SSOLogin{renewed, ended})
	}
	if list, err := s.ListSSOLogins(ctx, true); err != nil || !reflect.DeepEqual(list, []store.SSOLogin{renewed}) {
		t.Errorf("ListSSOLogins(active) =\n%+v, %v; want\n%+v", list, err, []store.SSOLogin{renewed})
	}

	// In a transaction, as a login writes its token and its row together.
	boom := errors.New("boom")
	if err := s.InTx(ctx, func(tx store.Store) error {
		tok := store.Token{UserID: alice.ID, Name: "tx", Prefix: "dg_tx", Hash: []byte("tx"), Method: store.TokenMethodSSO}
		if err := tx.CreateToken(ctx, &tok); err != nil {
			return err
		}
		l := store.SSOLogin{UserID: alice.ID, TokenID: tok.ID, RefreshHash: []byte("tx-refresh"), Flow: "browser"}
		if err := tx.CreateSSOLogin(ctx, &l); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	if _, err := s.SSOLoginByRefreshHash(ctx, []byte("tx-refresh")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a login rolled back is still there: %v", err)
	}
}
