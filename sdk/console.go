package sdk

import "time"

// The web console (`devgpu server` serves it at /). The browser holds its
// credential in an httpOnly cookie; a request authenticated by that cookie
// that changes something (any method but GET and HEAD) must carry the
// session's CSRF token in CSRFHeader, and a WebSocket upgrade
// authenticated by it must come from the server's own origin.
const (
	// ConsoleCookie holds the console's credential: a devgpu token minted
	// for the browser at login, revoked at logout.
	ConsoleCookie = "devgpu_console"
	// ConsoleCookieSecure is ConsoleCookie's name where the console is
	// served over https (TLS, or a public URL that is https): the __Host-
	// prefix makes the browser keep it only when Secure, with Path=/ and
	// no Domain, so that no other host (a sibling subdomain) can set it.
	ConsoleCookieSecure = "__Host-" + ConsoleCookie
	// LoginErrorCookie carries a failed single sign-on's sentence to the
	// login page, URL-encoded as encodeURIComponent does: readable by the
	// page's script (not httpOnly), for 60 seconds.
	LoginErrorCookie = "devgpu_login_error"
	// CSRFHeader carries ConsoleSession.CSRF on state-changing requests.
	CSRFHeader = "X-CSRF-Token"
)

// ConsoleLogin logs the browser in with an API token (servers without
// single sign-on, or service accounts): POST /api/v1/console/login.
type ConsoleLogin struct {
	Token string `json:"token"`
}

// ConsoleSession is the browser's login, GET /api/v1/console/session: who
// it is, and the CSRF token its state-changing requests carry.
type ConsoleSession struct {
	Whoami
	CSRF string `json:"csrf"`
	// SSO says that single sign-on in the browser is configured (an
	// identity provider, and the server's public URL that its redirect
	// URI is under): the login page offers it (GET /console/sso/start).
	SSO bool `json:"sso,omitempty"`
}

// LiveSession is a session as the console's live view shows it
// (GET /api/v1/sessions/live, a stream of server-sent events, each a
// LiveSnapshot): the session, and why it is still alive.
type LiveSession struct {
	Session
	// Shells are its open attachments.
	Shells []LiveAttachment `json:"shells,omitempty"`
	// LastActivity is the last keystroke or output in any of its shells,
	// as its agent reports it (nil when it could not be read).
	LastActivity *time.Time `json:"last_activity,omitempty"`
	// GPUUtilization is the busiest of its GPUs, 0-100 (nil: unknown,
	// such as a simulated GPU).
	GPUUtilization *float64 `json:"gpu_utilization,omitempty"`
	// IdleEndsAt, LifetimeEndsAt and GraceEndsAt are when the idle
	// timeout, the maximum lifetime and the detach grace (no shell open)
	// will end it, as things stand; nil when that limit does not apply.
	IdleEndsAt     *time.Time `json:"idle_ends_at,omitempty"`
	LifetimeEndsAt *time.Time `json:"lifetime_ends_at,omitempty"`
	GraceEndsAt    *time.Time `json:"grace_ends_at,omitempty"`
	// AliveBecause says in one sentence what keeps it alive and what will
	// end it, such as "2 shells are open (since 09:14 and 09:20); idle
	// for 3m, it ends at 10:02 unless used".
	AliveBecause string `json:"alive_because,omitempty"`
}

// LiveAttachment is one open shell of a session.
type LiveAttachment struct {
	// Kind is "terminal" (the web console's) or "shell" (devgpu shell,
	// ssh and the IDEs, which all tunnel alike).
	Kind     string    `json:"kind"`
	OpenedAt time.Time `json:"opened_at"`
}

// LiveSnapshot is one event of the live view: every active session the
// caller may see, as of At.
type LiveSnapshot struct {
	At       time.Time     `json:"at"`
	Sessions []LiveSession `json:"sessions"`
}

// ProjectStanding is where a project stands now against its limits, for
// the caller (GET /api/v1/standing: every project the caller belongs to,
// all of them for organisation admins): what a developer can still start
// before starting it, and an admin's view of use against caps.
type ProjectStanding struct {
	Project    string `json:"project"`
	Role       string `json:"role,omitempty"` // the caller's; empty for an org admin who is not a member
	GPUEnabled bool   `json:"gpu_enabled"`
	// GPUsInUse counts the project's active sessions' GPUs; MaxGPUs is its
	// cap (0: none).
	GPUsInUse int `json:"gpus_in_use"`
	MaxGPUs   int `json:"max_gpus"`
	// MyGPUsInUse counts the caller's; MaxGPUsPerUser is the per-user cap
	// (0: none).
	MyGPUsInUse    int `json:"my_gpus_in_use"`
	MaxGPUsPerUser int `json:"max_gpus_per_user"`
	// CanStart is how many more GPUs the caller may start now, as
	// admission would grant them one session after another: the least of
	// what the caps above, the organisation's quotas and the free GPUs of
	// the allowed types leave. The free GPUs always bound it (never
	// unbounded, never -1); 0 while admission refuses outright (GPUs
	// disabled, the budget spent) or others wait in the project's queue.
	CanStart int `json:"can_start"`
	// GPUTypes are the types the project allows that some backend offers,
	// with what is free of each now.
	GPUTypes []GPUPool `json:"gpu_types"`
	// Budget is the project's monthly budget (nil: none), Spent what this
	// calendar month (UTC) used of it, in the budget's unit (Currency, or
	// GPU-hours; in Currency without a budget), running sessions counted
	// up to now, and Remaining what is left (never below 0; 0 without a
	// budget).
	Budget    *Budget `json:"budget,omitempty"`
	Spent     float64 `json:"spent"`
	Remaining float64 `json:"remaining"`
	Currency  string  `json:"currency"`
}
