package authz

import "testing"

// The whole matrix: every check against every kind of caller.
func TestMatrix(t *testing.T) {
	t.Parallel()
	const owner = 1
	orgAdmin := Caller{UserID: 9, OrgAdmin: true}
	self := Caller{UserID: owner}
	other := Caller{UserID: 2}
	cases := []struct {
		name                                      string
		caller                                    Caller
		role                                      ProjectRole
		view, use, manage, viewSess, attach, stop Decision
	}{
		{"org admin, not a member", orgAdmin, RoleNone, Allowed, Allowed, Allowed, Allowed, Forbidden, Allowed},
		{"project admin", other, RoleAdmin, Allowed, Allowed, Allowed, Allowed, Forbidden, Allowed},
		{"developer, not owner", other, RoleDeveloper, Allowed, Allowed, Forbidden, Hidden, Hidden, Hidden},
		{"developer, owner", self, RoleDeveloper, Allowed, Allowed, Forbidden, Allowed, Allowed, Allowed},
		{"stranger", other, RoleNone, Hidden, Hidden, Hidden, Hidden, Hidden, Hidden},
	}
	for _, c := range cases {
		got := []Decision{
			ViewProject(c.caller, c.role), UseProject(c.caller, c.role), ManageProject(c.caller, c.role),
			ViewSession(c.caller, owner, c.role), AttachSession(c.caller, owner, c.role), StopSession(c.caller, owner, c.role),
		}
		want := []Decision{c.view, c.use, c.manage, c.viewSess, c.attach, c.stop}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: check %d = %v, want %v", c.name, i, got[i], want[i])
			}
		}
	}
	if OrgAdmin(orgAdmin) != Allowed || OrgAdmin(self) != Forbidden {
		t.Error("OrgAdmin decision wrong")
	}
}
