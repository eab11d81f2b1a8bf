// Package sdk holds the wire types of the devgpu HTTP API and a Go client for it.
// It imports nothing from internal/, so other programs can depend on it.
package sdk

import "time"

// Session states, in lifecycle order (see DESIGN.md).
const (
	StateRequested = "requested"
	StateQueued    = "queued"
	StateStarting  = "starting"
	StateRunning   = "running"
	StateStopping  = "stopping"
	StateEnded     = "ended"
	StateFailed    = "failed"
)

// End reasons recorded on ended sessions.
const (
	ReasonClosed   = "closed"   // the last attachment closed cleanly
	ReasonDetached = "detached" // no attachment came back within the detach grace
	ReasonIdle     = "idle"
	ReasonLifetime = "lifetime"
	ReasonBudget   = "budget"
	ReasonAdmin    = "admin"   // an administrator stopped someone else's session
	ReasonStopped  = "stopped" // the owner stopped it with `devgpu sessions stop`
	ReasonLost     = "lost"    // the runtime no longer has it
	ReasonError    = "error"   // the runtime failed to start it
	// ReasonCompleted: a detached run's command exited (Session.ExitStatus
	// says how).
	ReasonCompleted = "completed"
	// ReasonRevoked: its owner lost access (disabled, their last token
	// revoked, or removed from the project); their shells were cut.
	ReasonRevoked = "revoked"
	// Reasons of queued requests that never started (state failed):
	// ReasonGaveUp, its wait ran out or its client went away for longer
	// than the detach grace; ReasonJoined, another of the user's sessions
	// served it (a ready one, or one to share, named by its event's
	// session); ReasonRefused, admission came to refuse it while it waited
	// (a policy changed; Error says why).
	ReasonGaveUp  = "gave_up"
	ReasonJoined  = "joined"
	ReasonRefused = "refused"
)

// Session is a GPU session as the API reports it. Fields are only ever added.
type Session struct {
	ID      string   `json:"id"`
	Project string   `json:"project"`
	User    string   `json:"user"`
	State   string   `json:"state"`
	GPUType string   `json:"gpu_type"`
	Region  string   `json:"region"`
	GPUs    []string `json:"gpus"`
	// Backend is the runtime of the server the session was placed on, and
	// Node the machine it landed on, as the runtime reported it.
	Backend     string `json:"backend,omitempty"`
	Node        string `json:"node,omitempty"`
	Image       string `json:"image,omitempty"`
	Attachments int    `json:"attachments"`
	// DetachGrace is how long the session waits for a client once its
	// last shell has closed, as fixed when it was created (a shell that
	// lost its connection reconnects within it).
	DetachGrace Duration   `json:"detach_grace,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at"`
	EndedAt     *time.Time `json:"ended_at"`
	EndReason   string     `json:"end_reason,omitempty"`
	// EndedBy is who ended the session: the user who stopped it, or
	// "system" for the control plane (idle, lifetime, budget, lost).
	EndedBy string `json:"ended_by,omitempty"`
	// Error explains a failed session.
	Error string `json:"error,omitempty"`
	// Warnings are shown to the user when the session is created, e.g.
	// that the project is near its budget.
	Warnings []string `json:"warnings,omitempty"`
	// Name and Command are a detached run's (`devgpu run --detach`):
	// Command is the command line its shell runs, empty for interactive
	// sessions. ExitStatus is its exit status once it exited (128+n when
	// signal n killed it, ExitSignal naming the signal, e.g. "KILL"); nil
	// while it runs, and for a run that ended (lifetime, stop) first.
	Name       string `json:"name,omitempty"`
	Command    string `json:"command,omitempty"`
	ExitStatus *int   `json:"exit_status,omitempty"`
	ExitSignal string `json:"exit_signal,omitempty"`
	// LogBytes is how much of a detached run's output its log keeps now.
	LogBytes int64 `json:"log_bytes,omitempty"`
}

// Detached reports whether the session is a detached run.
func (s Session) Detached() bool { return s.Command != "" }

// Active reports whether the session still holds its GPUs.
func (s Session) Active() bool {
	return s.State != StateEnded && s.State != StateFailed
}

// CreateSessionRequest asks for a session. Under the shared and spillover
// shell modes the answer may be an existing session of the caller's to
// attach to. With Wait, a request that cannot be admitted now queues (FIFO
// per project) for up to that long; the response is then a stream of
// SessionEvents, one JSON object per line.
type CreateSessionRequest struct {
	Project string   `json:"project,omitempty"`
	GPUType string   `json:"gpu_type,omitempty"`
	Region  string   `json:"region,omitempty"`
	Image   string   `json:"image,omitempty"`
	Wait    Duration `json:"wait,omitempty"`
	// Progress asks for the stream of SessionEvents even without Wait, to
	// show a slow start (an image pull) as it goes.
	Progress bool `json:"progress,omitempty"`
	// Command makes the session a detached run: the session's shell runs
	// this command line with no client attached, its output is kept in
	// the server's log, and the session ends (reason completed) when it
	// exits. Name labels it. A detached run never joins another session;
	// queued (Wait), it keeps its place with no client waiting, and the
	// response is the queued session at once.
	Command string `json:"command,omitempty"`
	Name    string `json:"name,omitempty"`
}

// SessionEvent is one line of a waiting create's response (or of
// Client.WaitSession's): the queue position and the reason it waits, then
// the session, or a problem.
type SessionEvent struct {
	// ID is the queued session's id, sent with the first queue event: a
	// client that lost the stream waits on with Client.WaitSession.
	ID       string `json:"id,omitempty"`
	Position int    `json:"position,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// Step, Done and Total tell how a slow step of the start goes, such
	// as "pulling python-cuda" with bytes done of total.
	Step    string   `json:"step,omitempty"`
	Done    int64    `json:"done,omitempty"`
	Total   int64    `json:"total,omitempty"`
	Session *Session `json:"session,omitempty"`
	Problem *Problem `json:"problem,omitempty"`
}

// Project is a project with its own settings and the effective ones.
type Project struct {
	Name string `json:"name"`
	// Settings are the project's own values; absent ones inherit.
	Settings ProjectSettings `json:"settings"`
	// Effective is every setting as it applies, with its source.
	Effective map[string]Setting `json:"effective"`
	CreatedAt time.Time          `json:"created_at"`
	UpdatedAt time.Time          `json:"updated_at"`
}

// ProjectCreate creates a project; unset settings inherit.
type ProjectCreate struct {
	Name     string          `json:"name"`
	Settings ProjectSettings `json:"settings"`
}

// ProjectUpdate changes the settings it sets, makes the Unset ones inherit
// again, and leaves the others alone. StopRunning, with gpu_enabled false,
// also ends the project's running sessions (reason admin).
type ProjectUpdate struct {
	Settings    ProjectSettings `json:"settings"`
	Unset       []string        `json:"unset,omitempty"`
	StopRunning bool            `json:"stop_running,omitempty"`
	// BudgetFields names the fields of Settings.Budget this update sets
	// ("amount", "unit", "thresholds", "action"); the project's other
	// budget fields are kept. Empty: Settings.Budget replaces the budget.
	BudgetFields []string `json:"budget_fields,omitempty"`
}

// User is an account.
type User struct {
	Name     string `json:"name"`
	OrgAdmin bool   `json:"org_admin"`
	Disabled bool   `json:"disabled"`
	// ServiceAccount: a robot that may use API tokens where the
	// organisation requires single sign-on for people.
	ServiceAccount bool `json:"service_account,omitempty"`
	// SSO: the user is bound to an identity-provider account (they have
	// logged in with single sign-on at least once).
	SSO bool `json:"sso,omitempty"`
	// SSOBindAllowed: an administrator allowed the next single sign-on
	// under this name to bind the user (`devgpu admin user update NAME
	// --bind-sso`); it has not happened yet.
	SSOBindAllowed bool      `json:"sso_bind_allowed,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
}

// UserCreate creates a user.
type UserCreate struct {
	Name     string `json:"name"`
	OrgAdmin bool   `json:"org_admin,omitempty"`
}

// UserCreated is a new user with their first token, shown only this once.
type UserCreated struct {
	User
	Token string `json:"token"`
}

// UserUpdate changes the fields it sets.
type UserUpdate struct {
	Disabled       *bool `json:"disabled,omitempty"`
	ServiceAccount *bool `json:"service_account,omitempty"`
	// BindSSO true lets the next single sign-on under the user's name
	// bind them to that account (a user made by hand is never bound
	// otherwise); false withdraws a permission not yet used.
	BindSSO *bool `json:"bind_sso,omitempty"`
}

// Token describes an API token; the secret itself is never listed.
type Token struct {
	ID        int64      `json:"id"`
	User      string     `json:"user"`
	Name      string     `json:"name"`
	Prefix    string     `json:"prefix"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
	// Scope is TokenScopeFull or TokenScopeDeveloper.
	Scope string `json:"scope"`
	// ParentID is the token that created this one, if any: revoking it
	// revokes this one too.
	ParentID int64 `json:"parent_id,omitempty"`
}

// Token scopes. A token created with another token never outlives it and
// is never wider: a developer-scoped token makes only developer-scoped ones.
const (
	// TokenScopeFull carries all of its user's rights.
	TokenScopeFull = "full"
	// TokenScopeDeveloper never carries organisation-admin rights.
	TokenScopeDeveloper = "developer"
)

// TokenCreate asks for a new token, for the caller or (org admins) for User.
type TokenCreate struct {
	User      string   `json:"user,omitempty"`
	Name      string   `json:"name,omitempty"`
	ExpiresIn Duration `json:"expires_in,omitempty"` // 0: never, or when the creating token expires
	// Scope is TokenScopeFull (default: as the creating token) or
	// TokenScopeDeveloper.
	Scope string `json:"scope,omitempty"`
}

// TokenCreated is a new token, shown only this once.
type TokenCreated struct {
	Token
	Secret string `json:"token"`
}

// Member is a user's role in a project: "developer" or "admin".
type Member struct {
	User string `json:"user"`
	Role string `json:"role"`
	// Source is "group" when an identity-provider group mapping made the
	// membership (each login re-reads it); empty when made by hand.
	Source string `json:"source,omitempty"`
}

// AuditEvent is one entry of the audit log. Before and After hold the
// changed object as JSON where that applies.
type AuditEvent struct {
	ID      int64     `json:"id"`
	At      time.Time `json:"at"`
	Actor   string    `json:"actor"`
	Action  string    `json:"action"`
	Project string    `json:"project,omitempty"`
	Target  string    `json:"target,omitempty"`
	Before  any       `json:"before,omitempty"`
	After   any       `json:"after,omitempty"`
}

// GPUPool is the availability of one GPU type in one region.
type GPUPool struct {
	Type   string `json:"type"`
	Region string `json:"region"`
	Free   int    `json:"free"`
	Total  int    `json:"total"`
}

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// Whoami describes the caller.
type Whoami struct {
	User     string `json:"user"`
	OrgAdmin bool   `json:"org_admin"`
	// Runtime names where the server runs sessions (local, oci, ...), and
	// RuntimeWarnings what it cannot enforce there, such as isolation
	// between the users of the local runtime.
	Runtime         string   `json:"runtime,omitempty"`
	RuntimeWarnings []string `json:"runtime_warnings,omitempty"`
	// Auth is how the caller authenticated: AuthToken or AuthSSO.
	Auth           string `json:"auth,omitempty"`
	ServiceAccount bool   `json:"service_account,omitempty"`
	// ExpiresAt is when the credential stops working (nil: an API token
	// that never expires); an SSO credential is renewed before then.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Groups are the identity-provider groups as of the last check of an
	// SSO login.
	Groups []string `json:"groups,omitempty"`
	// Projects are the caller's memberships.
	Projects []WhoamiProject `json:"projects,omitempty"`
}

// How a caller authenticated (Whoami.Auth).
const (
	AuthToken = "token"
	AuthSSO   = "sso"
)

// WhoamiProject is one of the caller's memberships.
type WhoamiProject struct {
	Name   string `json:"name"`
	Role   string `json:"role"`
	Source string `json:"source,omitempty"` // "group" or "" (by hand)
}

// UsageRow is one grouping of a usage report.
type UsageRow struct {
	Key        string  `json:"key"`
	GPUSeconds float64 `json:"gpu_seconds"`
	GPUHours   float64 `json:"gpu_hours"`
	Cost       float64 `json:"cost"`
	CostMicros int64   `json:"cost_micros"`
}

// UsageReport is GPU usage and its cost over [From, To), grouped By day,
// user, project or gpu-type. Running sessions count up to the report time.
type UsageReport struct {
	From     time.Time  `json:"from"`
	To       time.Time  `json:"to"`
	By       string     `json:"by"`
	Currency string     `json:"currency"`
	Rows     []UsageRow `json:"rows"`
	Total    UsageRow   `json:"total"`
}

// WarmPool keeps Size ready sessions of a GPU type (and image) started in
// a project, handed to the next shells that fit. Ready counts those
// started now. Ready sessions count against the project's cap and the
// org's quota, and are metered only once claimed.
type WarmPool struct {
	Project string `json:"project"`
	GPUType string `json:"gpu_type"`
	Image   string `json:"image,omitempty"`
	Size    int    `json:"size"`
	Ready   int    `json:"ready"`
}
