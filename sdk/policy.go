package sdk

import "time"

// Shell modes.
const (
	ModeDedicated = "dedicated" // a new session and GPU per shell
	ModeShared    = "shared"    // all of a user's shells in the project share one session
	ModeSpillover = "spillover" // dedicated up to the user's cap, then join the least-loaded one
)

// Egress modes.
const (
	EgressNone      = "none"
	EgressAllowList = "allow-list"
	EgressAll       = "all"
)

// Egress is a session network policy. Allow holds CIDRs, IP addresses or
// host names, each with an optional :port, for the allow-list mode: it
// opens destinations outside the host, never the host's own services.
type Egress struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"`
	// HostAccess is the organisation's OrgPolicy.AllowHostAccess, copied in
	// by the server when a session starts; a project cannot set it.
	HostAccess []string `json:"host_access,omitempty"`
}

// ProjectSettings are a project's own settings, or the organisation's
// defaults. An absent (nil) field is not set and inherits. Counts and
// durations of 0 mean "no limit"; empty lists mean "any".
type ProjectSettings struct {
	GPUEnabled     *bool      `json:"gpu_enabled,omitempty"`
	MaxGPUs        *int       `json:"max_gpus,omitempty"`
	MaxGPUsPerUser *int       `json:"max_gpus_per_user,omitempty"`
	GPUTypes       *[]string  `json:"gpu_types,omitempty"`
	Regions        *[]string  `json:"regions,omitempty"`
	DefaultImage   *string    `json:"default_image,omitempty"`
	Images         *[]string  `json:"images,omitempty"`
	ShellMode      *string    `json:"shell_mode,omitempty"`
	IdleTimeout    *Duration  `json:"idle_timeout,omitempty"`
	MaxLifetime    *Duration  `json:"max_lifetime,omitempty"`
	DetachGrace    *Duration  `json:"detach_grace,omitempty"`
	Egress         *Egress    `json:"egress,omitempty"`
	Budget         *Budget    `json:"budget,omitempty"`
	Workspace      *Workspace `json:"workspace,omitempty"`
	// LogLimitBytes bounds the output each detached run of the project
	// keeps in the server's log: past it, the oldest output is dropped.
	LogLimitBytes *int64 `json:"log_limit_bytes,omitempty"`
}

// Workspace is the persistent directory each user of a project gets,
// mounted into every session of theirs in the project, so that data and
// checkpoints outlive sessions. LimitBytes bounds each user's workspace
// (0: no limit); one over it is mounted read-only until space is freed.
type Workspace struct {
	Enabled    bool  `json:"enabled"`
	LimitBytes int64 `json:"limit_bytes,omitempty"`
}

// Budget units and actions.
const (
	BudgetCurrency = "currency"
	BudgetGPUHours = "gpu-hours"
	BudgetRefuse   = "refuse" // at 100%, refuse new sessions
	BudgetStop     = "stop"   // at 100%, also end running ones (reason budget)
)

// Budget is a project's limit per calendar month (UTC). An Amount of 0 is
// no budget.
type Budget struct {
	Amount     float64 `json:"amount"`
	Unit       string  `json:"unit"`
	Thresholds []int   `json:"thresholds,omitempty"` // percentages that warn, e.g. 80, 100
	Action     string  `json:"action,omitempty"`
}

// Quota caps concurrent GPUs of one type (and optionally one region)
// across the organisation: the "subscription quota".
type Quota struct {
	GPUType string `json:"gpu_type"`
	Region  string `json:"region,omitempty"`
	Max     int    `json:"max"`
}

// OrgPolicy is the organisation policy: defaults for projects, which
// settings projects may not change, and the GPU quotas.
type OrgPolicy struct {
	Defaults ProjectSettings `json:"defaults"`
	Locked   []string        `json:"locked,omitempty"`
	Quotas   []Quota         `json:"quotas,omitempty"`
	// Registries are where bring-your-own images may come from (e.g.
	// "ghcr.io", "docker.io"); images in the catalog need no entry here.
	Registries []string `json:"registries,omitempty"`
	// AllowHostAccess opens services of the server's host to sessions of
	// every project: its own addresses (the bridge's gateway included) and
	// the link-local range 169.254.0.0/16, where clouds serve instance
	// metadata. Sessions never reach them otherwise, whatever their egress.
	// Entries are CIDRs or IP addresses with an optional :port (TCP and
	// UDP), e.g. "169.254.169.254:80", "10.0.0.1:53" or "0.0.0.0/0:8080"
	// for one port on every host address. Empty (the default): none.
	AllowHostAccess []string `json:"allow_host_access,omitempty"`
	// RequireSSO: people must log in with single sign-on; API tokens then
	// work only for users marked as service accounts. The server refuses
	// it when no identity provider is configured.
	RequireSSO bool `json:"require_sso,omitempty"`
	// LogRetention is how long detached runs' logs are kept after the run
	// ends (0: the default, DefaultLogRetention).
	LogRetention Duration `json:"log_retention,omitempty"`
}

// DefaultLogRetention is how long detached runs' logs are kept after they
// end when the organisation sets no LogRetention.
const DefaultLogRetention = 7 * 24 * time.Hour

// CatalogImage is an image of the admin catalog: a friendly name for a
// reference.
type CatalogImage struct {
	Name      string    `json:"name"`
	Ref       string    `json:"ref"`
	CreatedAt time.Time `json:"created_at"`
}

// Setting is one effective setting with where its value comes from:
// "project", "org" or "default".
type Setting struct {
	Value  any    `json:"value"`
	Source string `json:"source"`
	Locked bool   `json:"locked,omitempty"`
}
