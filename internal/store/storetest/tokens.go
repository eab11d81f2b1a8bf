package storetest

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
)

// testTokenTree: a token keeps the token that created it and its scope;
// revoking a token revokes, in one transaction, every token below it and
// no other; a token revoked before keeps its first time.
func testTokenTree(t *testing.T, ctx context.Context, s store.Store) {
	alice, bob := mustUser(t, ctx, s, "alice"), mustUser(t, ctx, s, "bob")
	token := func(u store.User, name string, parent int64, scope string) store.Token {
		t.Helper()
		tok := store.Token{UserID: u.ID, Name: name, Prefix: "dg_" + name, Hash: []byte(name), ParentID: parent, Scope: scope}
		if err := s.CreateToken(ctx, &tok); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	//   root ─┬─ child ── grandchild (bob's)
	//         └─ early (revoked first)
	//   other
	root := token(alice, "root", 0, store.ScopeFull)
	child := token(alice, "child", root.ID, store.ScopeDeveloper)
	grandchild := token(bob, "grandchild", child.ID, store.ScopeDeveloper)
	early := token(alice, "early", root.ID, store.ScopeFull)
	other := token(alice, "other", 0, store.ScopeFull)
	if got, err := s.TokenByID(ctx, grandchild.ID); err != nil || !reflect.DeepEqual(got, grandchild) {
		t.Fatalf("TokenByID = %+v, %v; want %+v", got, err, grandchild)
	}
	if got, _, err := s.TokenByHash(ctx, child.Hash); err != nil || got.ParentID != root.ID || got.Scope != store.ScopeDeveloper {
		t.Fatalf("TokenByHash = %+v, %v; want parent %d, scope developer", got, err, root.ID)
	}
	if err := s.CreateToken(ctx, &store.Token{UserID: alice.ID, Hash: []byte("orphan"), ParentID: other.ID + 100}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateToken(unknown parent) = %v, want ErrNotFound", err)
	}

	first := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	if err := s.RevokeToken(ctx, early.ID, first); err != nil {
		t.Fatal(err)
	}
	at := first.Add(time.Hour)
	// A failure after the revocation rolls all of it back.
	boom := errors.New("boom")
	if err := s.InTx(ctx, func(tx store.Store) error {
		if err := tx.RevokeToken(ctx, root.ID, at); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	for _, tok := range []store.Token{root, child, grandchild} {
		if got, err := s.TokenByID(ctx, tok.ID); err != nil || !got.RevokedAt.IsZero() {
			t.Errorf("token %s after a rolled back revocation = %+v, %v", tok.Name, got, err)
		}
	}
	if err := s.RevokeToken(ctx, root.ID, at); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tok  store.Token
		want time.Time
	}{{root, at}, {child, at}, {grandchild, at}, {early, first}, {other, time.Time{}}} {
		if got, err := s.TokenByID(ctx, c.tok.ID); err != nil || !got.RevokedAt.Equal(c.want) {
			t.Errorf("token %s revoked at %v, %v; want %v", c.tok.Name, got.RevokedAt, err, c.want)
		}
	}
	if err := s.RevokeToken(ctx, other.ID+100, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeToken(unknown) = %v, want ErrNotFound", err)
	}
}
