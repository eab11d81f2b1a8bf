// Package store defines the control plane's persistent state and the one
// interface over it. The engines live in sqlite/ and postgres/ and share one
// SQL code path (sqlstore/); storetest/ is the conformance suite both pass.
package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/devgpu/devgpu/sdk"
)

// Sentinel errors every engine maps its driver errors onto.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
	// ErrUnavailable: the database cannot be reached (a refused or reset
	// connection, a connect timeout, no connection free in time); the call
	// may succeed if tried again in a moment.
	ErrUnavailable = errors.New("the database is unreachable")
)

// User is a person or robot that holds API tokens.
type User struct {
	ID       int64
	Name     string
	OrgAdmin bool
	Disabled bool
	// ServiceAccount marks a robot: it may use API tokens even where the
	// organisation requires single sign-on for people.
	ServiceAccount bool
	// Subject is the identity provider's `sub` for the person this user
	// was bound to at their first single sign-on ("" until then); a later
	// login with the same name but another subject is refused.
	// SubjectPendingBind marks a user an administrator allowed to be bound
	// by their next single sign-on (`devgpu admin user update NAME
	// --bind-sso`); a user made by hand is never bound otherwise.
	Subject string
	// OrgAdminFromGroups: OrgAdmin was granted by an identity-provider
	// group mapping, so leaving the group takes it away again; an admin
	// made by hand stays one.
	OrgAdminFromGroups bool
	CreatedAt          time.Time
}

// SubjectPendingBind is the User.Subject of a user whose next single
// sign-on under their name binds them to that account. It can never be a
// provider's `sub` (which is ASCII; the server refuses a subject equal to
// it all the same). A plain text value, so no migration is needed.
const SubjectPendingBind = "\u2063pending-sso-bind"

// Token is an API token. Only its SHA-256 hash is stored; Prefix is the
// short public part shown in listings.
type Token struct {
	ID        int64
	UserID    int64
	Name      string
	Prefix    string
	Hash      []byte
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never
	RevokedAt time.Time // zero: not revoked
	// ParentID is the token that created this one (0: none, as for the
	// bootstrap token). Revoking a token revokes every token below it.
	ParentID int64
	// Scope limits what the token may do beside its user's rights:
	// ScopeFull or ScopeDeveloper.
	Scope string
	// Method is how the token was obtained: TokenMethodAPI or
	// TokenMethodSSO (the short-lived credential of a single sign-on).
	Method string
}

// Token methods.
const (
	TokenMethodAPI = ""
	TokenMethodSSO = "sso"
)

// SSOLogin is one single sign-on through the organisation's identity
// provider: the devgpu credential it currently backs, the secret that
// renews it and the provider's refresh token the control plane re-checks
// the person's account and groups with.
type SSOLogin struct {
	ID     int64
	UserID int64
	// TokenID is the devgpu token (Method TokenMethodSSO) issued last;
	// each renewal issues a new one and revokes the one before.
	TokenID int64
	// RefreshHash is the SHA-256 of the devgpu refresh secret the CLI
	// holds; only the hash is stored.
	RefreshHash []byte
	// ProviderRefresh is the provider's refresh token, sealed with a key
	// derived from the agent key (never stored in the clear).
	ProviderRefresh []byte
	// Groups are the person's groups as of the last check.
	Groups []string
	// Flow is how the person logged in: "browser" or "device".
	Flow      string
	CreatedAt time.Time
	// CheckedAt is when the provider last confirmed the account.
	CheckedAt time.Time
	EndedAt   time.Time // zero: still active
	EndReason string
}

// Token scopes.
const (
	// ScopeFull carries all of its user's rights.
	ScopeFull = ""
	// ScopeDeveloper never carries organisation-admin rights, even when
	// its user is an organisation admin.
	ScopeDeveloper = "developer"
)

// Project is a unit of GPU policy. Settings holds only the project's own
// values (stored as JSON); policy.Resolve adds the inherited ones.
type Project struct {
	ID        int64
	Name      string
	Settings  sdk.ProjectSettings
	CreatedAt time.Time
	UpdatedAt time.Time
}

// AuditEvent is one entry of the append-only audit log. Before and After
// are JSON documents (or empty).
type AuditEvent struct {
	ID      int64
	At      time.Time
	Actor   string // user name, or "system" for the control plane itself
	Action  string // e.g. "project.update", "session.end"
	Project string // project name, when the event concerns one
	Target  string // what was acted on: a user name, a session id, a token prefix
	Before  string
	After   string
}

// AuditFilter selects audit events; zero fields match everything.
type AuditFilter struct {
	Project string
	// Actor matches the actor exactly.
	Actor string
	// Action matches the action exactly, or, when it ends in "." or "*",
	// every action that begins with it: "session." (or "session*", the
	// star dropped) matches session.start and session.end.
	Action string
	Since  time.Time // events at or after
	Until  time.Time // events before
	Limit  int       // 0: no limit; newest are kept when limited
}

// ActionPrefix reports the prefix an Action filter matches by, and whether
// it is one ("session." and "session*" are; "session.end" is not).
func (f AuditFilter) ActionPrefix() (string, bool) {
	if p, ok := strings.CutSuffix(f.Action, "*"); ok {
		return p, true
	}
	return f.Action, strings.HasSuffix(f.Action, ".")
}

// Member roles.
const (
	RoleDeveloper = "developer"
	RoleAdmin     = "admin"
)

// Member is a user's role in a project.
type Member struct {
	ProjectID int64
	Project   string // filled by reads
	UserID    int64
	User      string // filled by reads
	Role      string
	// Source is MemberSourceGroup when an identity-provider group mapping
	// made the membership (every login re-reads it), "" when it was made
	// by hand (logins never change it).
	Source string
}

// MemberSourceGroup marks a membership made by a group mapping.
const MemberSourceGroup = "group"

// Capacity is what one backend (a runtime the server drives) offers of one
// GPU type in one region, in all: the runtime reports it, the server
// records it, and admission subtracts what active sessions hold.
type Capacity struct {
	Backend string
	Type    string // lower case short name: t4, a100, h100
	Region  string
	Total   int
}

// Session is a GPU session's record. Zero times mean "not yet".
type Session struct {
	ID        string
	ProjectID int64
	Project   string // filled by reads
	UserID    int64
	User      string // filled by reads
	State     string // sdk.State*
	GPUType   string
	Region    string
	// Backend is the runtime the session was placed on ('' for sessions
	// recorded before backends existed: the server's first backend), and
	// GPUCount how many GPUs it holds; admission counts active sessions'
	// GPUCount against each backend's capacity.
	Backend  string
	GPUCount int
	// GPUs are the device ids the engine gave the session, Node the
	// machine it landed on and Handle the runtime's name for it: all as
	// the runtime reported at start (empty until then), kept after the end.
	GPUs        []string
	Node        string
	Handle      string
	Image       string // the resolved image reference; empty: the runtime's default
	Attachments int
	DetachGrace time.Duration
	CreatedAt   time.Time
	StartedAt   time.Time
	EndedAt     time.Time
	EndReason   string
	Error       string
	// DetachedAt is when the attachment count last fell to zero (or the
	// session started without one); zero while attached.
	DetachedAt time.Time
	// LastSeenAt is the last time the runtime reported the session alive.
	LastSeenAt time.Time
	// EndActor is who decided the end ("system" for the control plane),
	// and EndState the state a stopping session ends in: ended, or failed
	// when it never ran. Both are written, with EndReason and EndedAt,
	// when the session enters stopping, so that a restart can finish it.
	EndActor string
	EndState string
	// A queued session is a request waiting for GPUs (see QueuePosition):
	// GPUType, Region and Image are as asked ('' for any) until admission
	// places it. WaitUntil is when it gives up, QueueReason why it waits
	// (kept on the head of its project's queue), and ServedBy the session
	// that served it instead (a ready one claimed, or one joined).
	WaitUntil   time.Time
	QueueReason string
	ServedBy    string
	// Starter is the replica that starts the session (set when it becomes
	// starting): a new leader fails an interrupted start only when that
	// replica is gone.
	Starter string
	// Name and Command are a detached run's, written at creation and never
	// changed; Command is empty for interactive sessions. ExitStatus (nil
	// until its command exited) and ExitSignal are written by SetExit.
	Name       string
	Command    string
	ExitStatus *int
	ExitSignal string
	// LogOffset is how far into the run's output its log reaches (the end
	// of the last record appended, gaps included), LogBytes how many bytes
	// of output the log keeps: both kept by AppendLogs.
	LogOffset int64
	LogBytes  int64
}

// LogChunk is a piece of a detached run's output as the agent read it:
// Offset places Data in the run's output (both streams counted together),
// Stream is sdk.StreamStdout or sdk.StreamStderr, At when it was read.
type LogChunk struct {
	Offset int64
	Stream string
	At     time.Time
	Data   []byte
}

// LogFilter selects a session's log chunks: those with Offset >= After,
// oldest first, at most Limit (0: no limit). After is matched against the
// chunks' starts, so a reader goes on with After set to the end of the last
// chunk it got (Offset + len(Data)); a chunk that starts before After and
// ends past it is not returned. Stream and Since are left to the caller,
// which must see every chunk to tell gaps from filtering.
type LogFilter struct {
	SessionID string
	After     int64
	Limit     int
}

// CatalogImage is an entry of the admin image catalog: a friendly name
// for an image reference (a tag, or pinned by digest).
type CatalogImage struct {
	Name      string
	Ref       string
	CreatedAt time.Time
}

// WarmPool asks for Size ready sessions of a GPU type (and image) to be
// kept started in a project, handed to the next shells that fit.
type WarmPool struct {
	ProjectID int64
	Project   string // filled by reads
	GPUType   string
	Image     string // as a session would ask for it; empty: the project's default
	Size      int
}

// UsageEntry is one row of the append-only usage ledger: one GPU of one
// session, metered from running to ended, priced when it was appended.
type UsageEntry struct {
	ID        int64
	SessionID string
	GPUID     string
	UserID    int64
	User      string // filled by reads
	ProjectID int64
	Project   string // filled by reads
	GPUType   string
	Region    string
	Start     time.Time
	End       time.Time
	// CostMicros is the price in millionths of Currency, from the rate
	// cards in force over [Start, End).
	CostMicros int64
	Currency   string
}

// UsageFilter selects ledger entries that overlap [From, To); zero fields
// match everything.
type UsageFilter struct {
	ProjectID int64
	UserID    int64
	From, To  time.Time
}

// Rate is the price of one GPU-hour of a type, optionally in one region
// (empty: every region without its own rate).
type Rate struct {
	GPUType       string
	Region        string
	PerHourMicros int64
}

// RateCard is the prices in force from EffectiveFrom until the next card.
type RateCard struct {
	ID            int64
	EffectiveFrom time.Time
	Currency      string
	Rates         []Rate
}

// MonthUse is a project's use in one month; zero when it used nothing.
type MonthUse struct {
	CostMicros int64
	GPUMicros  int64 // GPU time, in microseconds
}

// BudgetAlert records that a project crossed a budget threshold (percent)
// in a month ("2026-11"), so that each crossing is reported once.
type BudgetAlert struct {
	ProjectID int64
	Month     string
	Threshold int
	At        time.Time
}

// SessionFilter selects sessions; zero fields match everything.
type SessionFilter struct {
	UserID     int64
	ProjectID  int64
	ActiveOnly bool   // not ended and not failed
	State      string // in this state only, when not empty
}

// Store is the control plane's state. Every method takes part in the
// transaction of the Store it is called on.
type Store interface {
	// InTx runs fn in one transaction that serialises with every other
	// InTx, so that admission decisions see a consistent snapshot and no
	// cap is ever exceeded. Calling InTx inside fn reuses the transaction.
	InTx(ctx context.Context, fn func(Store) error) error
	Close() error

	CreateUser(ctx context.Context, u *User) error
	UserByName(ctx context.Context, name string) (User, error)
	UserByID(ctx context.Context, id int64) (User, error)
	ListUsers(ctx context.Context) ([]User, error)

	// UpdateUser writes OrgAdmin, Disabled, ServiceAccount, Subject and
	// OrgAdminFromGroups of user u.ID (name and creation time never
	// change); ErrNotFound if unknown.
	UpdateUser(ctx context.Context, u User) error

	CreateToken(ctx context.Context, t *Token) error
	// ListTokens returns the user's tokens, or everyone's for userID 0,
	// ordered by id.
	ListTokens(ctx context.Context, userID int64) ([]Token, error)
	TokenByID(ctx context.Context, id int64) (Token, error)
	// RevokeToken sets RevokedAt (once; revoking again keeps the first
	// time) on the token and, in the same transaction, on every token it
	// created, directly or not.
	RevokeToken(ctx context.Context, id int64, at time.Time) error
	// TokenByHash returns the token with this hash and its user, whatever
	// their state: the caller checks expiry, revocation and disabled users.
	TokenByHash(ctx context.Context, hash []byte) (Token, User, error)

	CreateProject(ctx context.Context, p *Project) error
	UpdateProject(ctx context.Context, p *Project) error
	ProjectByName(ctx context.Context, name string) (Project, error)
	ProjectByID(ctx context.Context, id int64) (Project, error)
	ListProjects(ctx context.Context) ([]Project, error)
	// DeleteProject fails with ErrConflict while the project has active sessions.
	DeleteProject(ctx context.Context, id int64) error

	// SetMember adds the user to the project or changes their role and
	// source.
	SetMember(ctx context.Context, m Member) error
	RemoveMember(ctx context.Context, projectID, userID int64) error
	// MemberRole returns ErrNotFound when the user is not a member.
	MemberRole(ctx context.Context, projectID, userID int64) (string, error)
	ListMembers(ctx context.Context, projectID int64) ([]Member, error)
	// ListUserMembers returns the user's memberships, Project and User
	// filled, ordered by project name.
	ListUserMembers(ctx context.Context, userID int64) ([]Member, error)

	// CreateSSOLogin records a login and sets its ID; a zero CreatedAt
	// becomes now, a zero CheckedAt CreatedAt. Groups and ProviderRefresh
	// read back nil when empty.
	CreateSSOLogin(ctx context.Context, l *SSOLogin) error
	// SSOLoginByRefreshHash and SSOLoginByToken find a login (ended ones
	// included); ErrNotFound when none.
	SSOLoginByRefreshHash(ctx context.Context, hash []byte) (SSOLogin, error)
	SSOLoginByToken(ctx context.Context, tokenID int64) (SSOLogin, error)
	// UpdateSSOLogin writes TokenID, RefreshHash, ProviderRefresh, Groups,
	// CheckedAt, EndedAt and EndReason; ErrNotFound if unknown.
	UpdateSSOLogin(ctx context.Context, l SSOLogin) error
	// ListSSOLogins returns logins ordered by id: only those not ended
	// when activeOnly.
	ListSSOLogins(ctx context.Context, activeOnly bool) ([]SSOLogin, error)

	// OrgPolicy returns the organisation policy; the zero policy when none
	// was ever set.
	OrgPolicy(ctx context.Context) (sdk.OrgPolicy, error)
	SetOrgPolicy(ctx context.Context, p sdk.OrgPolicy) error

	// AppendAudit adds an event and sets its ID. Events are never changed.
	AppendAudit(ctx context.Context, e *AuditEvent) error
	// ListAudit returns matching events, oldest first.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, error)

	// AddImage adds a catalog entry; ErrConflict when the name is taken.
	AddImage(ctx context.Context, img *CatalogImage) error
	ImageByName(ctx context.Context, name string) (CatalogImage, error)
	// ListImages returns the catalog ordered by name.
	ListImages(ctx context.Context) ([]CatalogImage, error)
	// RemoveImage deletes a catalog entry; ErrNotFound when there is none.
	RemoveImage(ctx context.Context, name string) error

	// SetWarmPool creates, resizes or (Size 0) removes a warm pool.
	SetWarmPool(ctx context.Context, p WarmPool) error
	// ListWarmPools returns every warm pool ordered by project, type, image.
	ListWarmPools(ctx context.Context) ([]WarmPool, error)
	// ClaimSession hands a running session of user from to user to and
	// sets its StartedAt (metering starts then); ErrConflict when it is not
	// a running session of from.
	ClaimSession(ctx context.Context, id string, from, to int64, at time.Time) error

	// AppendUsage adds a ledger entry and sets its ID. An entry for the
	// same session and GPU exists at most once: a second is ErrConflict,
	// so nothing is ever counted twice.
	AppendUsage(ctx context.Context, e *UsageEntry) error
	// ListUsage returns the matching entries ordered by Start, then ID.
	ListUsage(ctx context.Context, f UsageFilter) ([]UsageEntry, error)
	// MonthUse returns the project's use in the month ("2006-01"): the
	// parts within it of the project's ledger entries, as
	// metering.MonthParts splits them. It is a running total that
	// AppendUsage keeps in the transaction that appends each entry, so
	// that admission reads it instead of the month's ledger.
	MonthUse(ctx context.Context, projectID int64, month string) (MonthUse, error)
	// AddRateCard appends a rate card and sets its ID.
	AddRateCard(ctx context.Context, c *RateCard) error
	// RateCards returns every rate card ordered by EffectiveFrom.
	RateCards(ctx context.Context) ([]RateCard, error)
	// AddBudgetAlert records a threshold crossing; ErrConflict when that
	// project, month and threshold were recorded already.
	AddBudgetAlert(ctx context.Context, a BudgetAlert) error
	ListBudgetAlerts(ctx context.Context, projectID int64, month string) ([]BudgetAlert, error)

	// SetCapacity makes what the store records of backend equal to caps
	// (rows of other backends stay), in one transaction that serialises
	// with InTx; Backend in caps is ignored. It refuses an entry without a
	// type, a negative total, and a type and region listed twice.
	SetCapacity(ctx context.Context, backend string, caps []Capacity) error
	// ListCapacity returns every backend's capacity ordered by backend,
	// type, region.
	ListCapacity(ctx context.Context) ([]Capacity, error)

	// CreateSession inserts s, with its Backend and GPUCount (and GPUs,
	// Node, Handle when already known). GPUs read back in the order
	// written; a device listed twice is refused.
	CreateSession(ctx context.Context, s *Session) error
	Session(ctx context.Context, id string) (Session, error)
	ListSessions(ctx context.Context, f SessionFilter) ([]Session, error)
	// UpdateSession writes StartedAt, Attachments, DetachedAt, LastSeenAt,
	// Error and the placement (GPUs, Node, Handle) of a session whose state
	// is s.State; empty GPUs leave the recorded devices as they are. It
	// never changes the state (TransitionSession does). It fails with
	// ErrConflict when the session is in another state, ended included.
	UpdateSession(ctx context.Context, s *Session) error
	// TransitionSession moves a session to state to, the one way to change
	// a session's state. Inside the transaction of the Store it is called
	// on, it reads the session, refuses a move lifecycle.Check refuses
	// with an error that is both a *lifecycle.IllegalMove and ErrConflict,
	// applies change (nil: none) to the record and writes what
	// UpdateSession writes plus EndReason, EndedAt, EndActor and EndState.
	// Entering stopping or an end state sets a zero EndedAt to now. It
	// returns the record as written.
	TransitionSession(ctx context.Context, id, to string, change func(*Session)) (Session, error)
	// UpdateQueued writes GPUType, Region, Backend, GPUCount, Image,
	// WaitUntil, QueueReason and ServedBy of a queued session: admission
	// places it, or records why it waits or what served it, before moving
	// it on. It fails with
	// ErrConflict when the session is not queued.
	UpdateQueued(ctx context.Context, s *Session) error
	// QueuePosition is a queued session's 1-based place in its project's
	// queue, FIFO by (CreatedAt, ID); 0 when it is not queued.
	QueuePosition(ctx context.Context, id string) (int, error)
	// EndSession moves an active session to state (ended or failed) with the
	// reason and time, through stopping where the table asks for it; its
	// GPUs then no longer count against capacity. A session already ended is left as it is and
	// ErrConflict is returned.
	EndSession(ctx context.Context, id, state, reason string, at time.Time) error

	// Detached runs' logs (logs.go).

	// AppendLogs appends chunks of a running or stopping session's output
	// that continue its log from offset from exactly, and moves its
	// LogOffset to to (>= the end of the last chunk; a gap between chunks
	// or before to is output not kept). It then drops the oldest chunks
	// until the log keeps at most limit bytes (limit <= 0: no bound), and
	// updates LogBytes; when the newest chunk alone holds more than limit,
	// its newest limit bytes stay, its Offset moved to where they start.
	// Chunks must be in order, apart, non-empty, of a known stream and
	// timed. It fails with ErrConflict when the session's LogOffset is not
	// from (another writer got there first) or the session has ended.
	AppendLogs(ctx context.Context, sessionID string, from, to int64, chunks []LogChunk, limit int64) error
	// Logs returns the chunks f selects; ErrNotFound for an unknown session.
	Logs(ctx context.Context, f LogFilter) ([]LogChunk, error)
	// SetExit records the exit of a session's detached command (status as
	// a shell reports it, signal "" unless one killed it) while it is
	// running or stopping; ErrConflict once it has ended.
	SetExit(ctx context.Context, id string, status int, signal string) error
	// DeleteLogs deletes the logs of sessions that ended (or failed)
	// before t, setting their LogBytes to 0, and returns how many sessions
	// had some. A stopping session's log stays, whatever its EndedAt.
	DeleteLogs(ctx context.Context, endedBefore time.Time) (int, error)

	// Replicas, leases, attachments and links (replicas.go): what several
	// servers on one store must agree on. Times are the store's own clock
	// (PostgreSQL's now(); the process clock on SQLite), so that replicas
	// whose clocks differ still agree on what has expired.

	// RegisterReplica records a server process (insert or replace), with
	// its heartbeat at the store's now.
	RegisterReplica(ctx context.Context, r *Replica) error
	// HeartbeatReplica moves the replica's heartbeat to the store's now.
	// ErrNotFound: it was declared dead (RemoveReplica) and must register
	// anew, cutting what it held.
	HeartbeatReplica(ctx context.Context, id string) error
	ListReplicas(ctx context.Context) ([]Replica, error)
	// RemoveReplica forgets a replica (one that stopped, or whose
	// heartbeat is older than the caller's deadline), with its attachments
	// (each session left with none gets DetachedAt = at, so the detach
	// grace applies) and its links. It returns the sessions whose
	// attachment count changed. Removing one that is not registered does
	// nothing: two replicas that both saw it die may both remove it.
	RemoveReplica(ctx context.Context, id string, at time.Time) ([]string, error)
	// StaleReplicas lists the replicas whose heartbeat is older than
	// maxAge by the store's clock.
	StaleReplicas(ctx context.Context, maxAge time.Duration) ([]Replica, error)

	// AcquireLease takes or renews the named lease for holder until the
	// store's now + ttl. It succeeds when the lease is free, expired or
	// already holder's; the epoch (the fencing token) rises by one each
	// time the lease changes hands and stays the same on a renewal.
	// ErrLeaseHeld when another holder's lease has not expired (with the
	// lease as recorded). Several callers at once: exactly one wins.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error)
	// ReleaseLease gives the lease up at once, if holder still holds it.
	ReleaseLease(ctx context.Context, name, holder string) error
	// Lease returns the lease as recorded: an expired one keeps its last
	// holder, a released one has Holder "". ErrNotFound: never taken.
	Lease(ctx context.Context, name string) (Lease, error)
	// CheckLease is the fence: inside a transaction, it fails with
	// ErrFenced unless holder holds the lease with this epoch and it has
	// not expired, and it keeps the lease from changing hands until the
	// transaction ends (row lock on PostgreSQL; SQLite has one writer).
	CheckLease(ctx context.Context, name, holder string, epoch int64) error

	// AddAttachment records an open shell on a session, held by a replica,
	// and sets the session's Attachments to its count and DetachedAt to
	// zero; it assigns a.ID (and OpenedAt when zero). ErrNotFound if the
	// session is not running or the replica is not registered (it was
	// declared dead: it must register anew).
	AddAttachment(ctx context.Context, a *Attachment) error
	// RemoveAttachment forgets one; when it was the session's last, the
	// session's DetachedAt becomes at (zero: now). It returns the count
	// left; ErrNotFound when it is gone already (its replica was declared
	// dead): nothing to do, and not "the last shell closed".
	RemoveAttachment(ctx context.Context, id int64, at time.Time) (left int, err error)
	ListAttachments(ctx context.Context, sessionID string) ([]Attachment, error)

	// SetLink records which replica holds the session's agent link (an
	// agent in a cluster dials one replica); ClearLink forgets it if that
	// replica still holds it. LinkOf returns the holder's record, or
	// ErrNotFound. SetLink: ErrNotFound when the session or the replica
	// is unknown.
	SetLink(ctx context.Context, sessionID, replica string) error
	ClearLink(ctx context.Context, sessionID, replica string) error
	LinkOf(ctx context.Context, sessionID string) (Replica, error)
}

// ErrLeaseHeld: another holder's lease has not expired. ErrFenced: the
// caller no longer holds the lease it acts under.
var (
	ErrLeaseHeld = errors.New("lease held by another replica")
	ErrFenced    = errors.New("lease lost: this replica no longer leads")
)

// Replica is one server process sharing the store.
type Replica struct {
	ID string
	// URL is where the other replicas reach this one (its relay
	// endpoint), e.g. https://10.0.0.7:8443.
	URL         string
	Version     string
	StartedAt   time.Time
	HeartbeatAt time.Time
}

// Lease is a named lock with an expiry; Epoch is its fencing token.
type Lease struct {
	Name      string
	Holder    string
	Epoch     int64
	ExpiresAt time.Time
}

// Attachment is one open shell on a session, held by a replica.
type Attachment struct {
	ID        int64
	SessionID string
	Replica   string
	UserID    int64
	OpenedAt  time.Time
}
