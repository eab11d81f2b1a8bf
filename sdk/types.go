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
)

// Session is a GPU session as the API reports it. Fields are only ever added.
type Session struct {
	ID          string     `json:"id"`
	Project     string     `json:"project"`
	User        string     `json:"user"`
	State       string     `json:"state"`
	GPUType     string     `json:"gpu_type"`
	Region      string     `json:"region"`
	GPUs        []string   `json:"gpus"`
	Attachments int        `json:"attachments"`
	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at"`
	EndedAt     *time.Time `json:"ended_at"`
	EndReason   string     `json:"end_reason,omitempty"`
	// Error explains a failed session.
	Error string `json:"error,omitempty"`
}

// Active reports whether the session still holds its GPUs.
func (s Session) Active() bool {
	return s.State != StateEnded && s.State != StateFailed
}

// CreateSessionRequest asks for a new session, or with Attach for the
// caller's existing one.
type CreateSessionRequest struct {
	Project string `json:"project,omitempty"`
	GPUType string `json:"gpu_type,omitempty"`
	Region  string `json:"region,omitempty"`
}

// Project is a project's settings.
type Project struct {
	Name        string    `json:"name"`
	GPUEnabled  bool      `json:"gpu_enabled"`
	DetachGrace Duration  `json:"detach_grace"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// ProjectUpdate changes the settings that are set; nil fields are left alone.
type ProjectUpdate struct {
	GPUEnabled  *bool     `json:"gpu_enabled,omitempty"`
	DetachGrace *Duration `json:"detach_grace,omitempty"`
}

// ProjectCreate creates a project; unset settings take their defaults.
type ProjectCreate struct {
	Name string `json:"name"`
	ProjectUpdate
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
}
