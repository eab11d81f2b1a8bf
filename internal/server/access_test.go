package server

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/testutil"
	"github.com/devgpu/devgpu/sdk"
)

// A token made with a limited token tries to outlive it and to outrank it.
func TestTokenNeverOutlivesOrOutranksItsCreator(t *testing.T) {
	t.Parallel()
	r := newAccessRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	limited, err := r.client(r.admin).CreateToken(ctx, sdk.TokenCreate{Name: "ci", ExpiresIn: sdk.Duration(time.Hour), Scope: sdk.TokenScopeDeveloper})
	if err != nil {
		t.Fatal(err)
	}
	lc := r.client(limited.Secret)
	if _, err := lc.CreateToken(ctx, sdk.TokenCreate{Name: "longer", ExpiresIn: sdk.Duration(48 * time.Hour)}); statusOf(err) != http.StatusForbidden {
		t.Errorf("a token outliving its creator: %v, want 403", err)
	}
	if _, err := lc.CreateToken(ctx, sdk.TokenCreate{Name: "wider", Scope: sdk.TokenScopeFull}); statusOf(err) != http.StatusForbidden {
		t.Errorf("a full-scope token from a developer-scoped one: %v, want 403", err)
	}
	child, err := lc.CreateToken(ctx, sdk.TokenCreate{Name: "child"})
	if err != nil {
		t.Fatal(err)
	}
	if child.ExpiresAt == nil || child.ExpiresAt.After(*limited.ExpiresAt) || child.Scope != sdk.TokenScopeDeveloper || child.ParentID != limited.ID {
		t.Errorf("child token = %+v; want it to expire by %v, developer-scoped, parent %d", child.Token, limited.ExpiresAt, limited.ID)
	}
	// The admin's developer-scoped token has no organisation-admin rights.
	if _, err := lc.CreateToken(ctx, sdk.TokenCreate{User: "dev", Name: "for-dev"}); statusOf(err) != http.StatusForbidden {
		t.Errorf("a developer-scoped token minting for another user: %v, want 403", err)
	}
	if _, err := lc.CreateUser(ctx, sdk.UserCreate{Name: "eve", OrgAdmin: true}); statusOf(err) != http.StatusForbidden {
		t.Errorf("a developer-scoped token creating an org admin: %v, want 403", err)
	}
	if w, err := lc.Whoami(ctx); err != nil || w.OrgAdmin {
		t.Errorf("whoami with a developer-scoped token = %+v, %v; want no org admin", w, err)
	}

	// A full-scope token that expires: users it creates get a first token
	// that expires with it.
	short, err := r.client(r.admin).CreateToken(ctx, sdk.TokenCreate{Name: "short", ExpiresIn: sdk.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	eve, err := r.client(short.Secret).CreateUser(ctx, sdk.UserCreate{Name: "eve"})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := r.client(r.admin).Tokens(ctx, "eve")
	if err != nil || len(tokens) != 1 || tokens[0].ExpiresAt == nil || tokens[0].ExpiresAt.After(*short.ExpiresAt) {
		t.Errorf("eve's first token = %+v, %v; want one expiring by %v", tokens, err, short.ExpiresAt)
	}
	_ = eve
}

// Revoking a token revokes what it created, down the tree, across users;
// tokens of other trees keep working.
func TestRevokeCascades(t *testing.T) {
	t.Parallel()
	r := newAccessRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	second, err := r.client(r.admin).CreateToken(ctx, sdk.TokenCreate{Name: "automation"})
	if err != nil {
		t.Fatal(err)
	}
	forDev, err := r.client(second.Secret).CreateToken(ctx, sdk.TokenCreate{User: "dev", Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := r.client(forDev.Secret).CreateToken(ctx, sdk.TokenCreate{Name: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.client(grandchild.Secret).Whoami(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.client(r.admin).RevokeToken(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"the revoked token": second.Secret, "its child": forDev.Secret, "its grandchild": grandchild.Secret} {
		if _, err := r.client(tok).Whoami(ctx); statusOf(err) != http.StatusUnauthorized {
			t.Errorf("%s after the revocation: %v, want 401", name, err)
		}
	}
	for name, tok := range map[string]string{"root": r.admin, "dev": r.tokens["dev"]} {
		if _, err := r.client(tok).Whoami(ctx); err != nil {
			t.Errorf("%s's own token after revoking another tree: %v", name, err)
		}
	}
}

// No request names an attachment any more: a shell leaves only by the
// signal on its own tunnel (tunnelend.go). User dev2 posts the old leave
// request for dev's attachment, in dev2's own session and in dev's: both
// are refused, and dev's shell, when its connection then breaks, is
// detached within the grace, not ended as closed.
func TestLeaveBoundToOwnAttachment(t *testing.T) {
	t.Parallel()
	r := newAccessRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	victim, tunnel, cut := r.shell("dev")
	own, _, _ := r.shell("dev2")
	for _, sessionID := range []string{own.ID, victim.ID} {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url+"/api/v1/sessions/"+sessionID+"/leave?attachment="+tunnel.Attachment, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+r.tokens["dev2"])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("dev2's leave for dev's attachment %s in session %s: %s, want refused", tunnel.Attachment, sessionID, resp.Status)
		}
	}
	cut()
	s := r.waitSession(t, victim.ID, "to lose its attachment", func(s store.Session) bool {
		return s.Attachments == 0 || s.State == sdk.StateEnded
	})
	if s.State != sdk.StateRunning {
		t.Fatalf("dev's session after its connection broke = %s (%s); want running within the detach grace", s.State, s.EndReason)
	}
}

// Disabling a user, revoking their last token or removing them from the
// project cuts their open shell at once, ends the session (revoked) with
// an audit event, and they cannot attach again.
func TestAccessCutClosesShells(t *testing.T) {
	t.Parallel()
	r := newAccessRig(t)
	ctx := testutil.Context(t, testutil.WaitLong)
	admin := r.client(r.admin)
	for _, c := range []struct {
		user, why string
		cut       func() error
	}{
		{"dev", "disabled", func() error {
			_, err := admin.UpdateUser(ctx, "dev", sdk.UserUpdate{Disabled: ptr(true)})
			return err
		}},
		{"dev2", "last token revoked", func() error {
			tokens, err := admin.Tokens(ctx, "dev2")
			if err != nil || len(tokens) != 1 {
				return errors.Join(err, errors.New("dev2 has not exactly one token"))
			}
			_, err = admin.RevokeToken(ctx, tokens[0].ID)
			return err
		}},
		{"dev3", "removed", func() error { return admin.RemoveMember(ctx, "default", "dev3") }},
	} {
		t.Run(c.user, func(t *testing.T) {
			sess, tunnel, _ := r.shell(c.user)
			if err := c.cut(); err != nil {
				t.Fatal(err)
			}
			// The tunnel is closed by the server, not left to the agent's
			// idle timer: a read ends well within the deadline.
			start := time.Now()
			_ = tunnel.SetReadDeadline(start.Add(testutil.WaitShort))
			_, err := tunnel.Read(make([]byte, 1))
			if err == nil || time.Since(start) >= testutil.WaitShort || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("shell of %s still open %s after access was cut: %v", c.user, time.Since(start).Round(time.Millisecond), err)
			}
			s := r.waitSession(t, sess.ID, "to end", func(s store.Session) bool { return s.State == sdk.StateEnded })
			if s.EndReason != sdk.ReasonRevoked {
				t.Errorf("end reason %q, want %q", s.EndReason, sdk.ReasonRevoked)
			}
			events, err := r.st.ListAudit(ctx, store.AuditFilter{})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range events {
				found = found || (e.Action == "access.cut" && e.Target == c.user && bytes.Contains([]byte(e.After), []byte(sess.ID)))
			}
			if !found {
				t.Errorf("no access.cut audit event for %s naming session %s", c.user, sess.ID)
			}
		})
	}
	// dev3 still has a working token, but is no member: no new session,
	// no attach to the old one.
	dev3 := r.client(r.tokens["dev3"])
	if _, err := dev3.CreateSession(ctx, sdk.CreateSessionRequest{Project: "default"}, nil); statusOf(err) != http.StatusNotFound {
		t.Errorf("removed member starting a session: %v, want 404", err)
	}
}
