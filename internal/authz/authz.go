// Package authz decides who may do what, in one place. It holds no business
// logic and reads nothing itself: callers pass the facts (the caller, their
// role in the project, the resource's owner) and get a decision back.
//
// A refusal that would reveal that a resource exists is Hidden (HTTP 404);
// a refusal on a resource the caller may see is Forbidden (HTTP 403).
package authz

// Decision is the outcome of an authorization check.
type Decision int

const (
	Allowed Decision = iota
	Forbidden
	Hidden
)

// Caller is who is asking.
type Caller struct {
	UserID   int64
	OrgAdmin bool
}

// ProjectRole is the caller's role in a project: "" for none,
// "developer" or "admin".
type ProjectRole string

// Role values.
const (
	RoleNone      ProjectRole = ""
	RoleDeveloper ProjectRole = "developer"
	RoleAdmin     ProjectRole = "admin"
)

// ViewProject: org admins and members see a project; others are told it
// does not exist.
func ViewProject(c Caller, role ProjectRole) Decision {
	if c.OrgAdmin || role != RoleNone {
		return Allowed
	}
	return Hidden
}

// UseProject: starting sessions needs membership (or org admin).
func UseProject(c Caller, role ProjectRole) Decision {
	return ViewProject(c, role)
}

// ManageProject: changing settings needs the project's admin role or org admin.
func ManageProject(c Caller, role ProjectRole) Decision {
	switch {
	case c.OrgAdmin || role == RoleAdmin:
		return Allowed
	case role == RoleDeveloper:
		return Forbidden
	default:
		return Hidden
	}
}

// OrgAdmin gates organisation-wide actions such as creating projects.
func OrgAdmin(c Caller) Decision {
	if c.OrgAdmin {
		return Allowed
	}
	return Forbidden
}

// ViewSession: a developer sees only their own sessions; org admins and the
// session project's admins see all of them.
func ViewSession(c Caller, owner int64, projectRole ProjectRole) Decision {
	if c.OrgAdmin || c.UserID == owner || projectRole == RoleAdmin {
		return Allowed
	}
	return Hidden
}

// AttachSession: only the owner opens shells in a session; nobody else may
// type into someone's shell, admins included.
func AttachSession(c Caller, owner int64, projectRole ProjectRole) Decision {
	if c.UserID == owner {
		return Allowed
	}
	if ViewSession(c, owner, projectRole) == Allowed {
		return Forbidden
	}
	return Hidden
}

// StopSession: the owner, the project's admins and org admins may stop it.
func StopSession(c Caller, owner int64, projectRole ProjectRole) Decision {
	return ViewSession(c, owner, projectRole)
}
