// Package server is the control plane, `devgpu server`: the HTTP API, the
// broker that pipes shells to session agents, and the lifecycle loops
// (reaper, reconciler) that keep the store and the runtime in agreement.
// It decides and records; it never runs user code itself.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
)

// Config holds what the control plane is built from.
type Config struct {
	Store store.Store
	// Backends are the runtimes sessions run on, each under its own name;
	// the first is the default (backends.go). Each reports its GPU
	// capacity, and admission places a session on one of them.
	Backends []Backend
	// Link, when set, is where agents that the control plane cannot dial
	// (Pods in a cluster) link to, at GET /api/v1/agent/link (link.go);
	// nil when no backend needs it.
	Link *link.Hub
	// Replica names this process among the servers sharing the store
	// (replica.go); an empty ID gets a random one, an empty URL none
	// (no other replica can relay through this one).
	Replica Replica
	// Exclusive says that the store serves this process alone (SQLite,
	// which refuses a second server): every other replica recorded in it
	// is dead, and is forgotten at start, and this one leads without a
	// lease, so that a store that cannot write stops no background work.
	Exclusive bool
	// HeartbeatInterval is how often this replica tells the store it is
	// alive; ReplicaTimeout how long without a heartbeat before the leader
	// declares a replica dead (default three heartbeats); LeaseTTL the
	// leader lease's term, renewed every third of it (lease.go).
	HeartbeatInterval time.Duration
	ReplicaTimeout    time.Duration
	LeaseTTL          time.Duration
	Logger            *slog.Logger
	// Timing knobs; zero values take the defaults below. Tests shorten them.
	ReapInterval     time.Duration // how often detach graces are checked
	LivenessInterval time.Duration // how often the runtime is asked what is alive
	PingInterval     time.Duration // WebSocket keepalive to detect vanished clients
	// Rates is the rate card to be in force; a change applies from the
	// moment the server starts with it. Nil keeps the one in force.
	Rates *store.RateCard
	// WorkspaceDir holds the users' persistent workspaces, one directory
	// per project and user; empty disables workspaces.
	WorkspaceDir string
	// PoolInterval is how often warm pools are refilled.
	PoolInterval time.Duration
	// QueueInterval is how often the queues are looked at when no end or
	// policy change woke them (queue.go): changes made elsewhere.
	QueueInterval time.Duration
	// BudgetInterval is how often budgets are checked for thresholds and
	// the stop action.
	BudgetInterval time.Duration
	// StoreRetryInterval is how often the store's health is probed and
	// the ends of sessions it refused to record are retried.
	StoreRetryInterval time.Duration
	// LiveInterval is how often the console's live view is computed
	// again (live.go; default DefaultLiveInterval).
	LiveInterval time.Duration
	// LogRetentionInterval is how often the leader deletes the logs of
	// detached runs that ended longer ago than the organisation's
	// log_retention (default DefaultLogRetentionInterval).
	LogRetentionInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AgentKey (AgentKeySize bytes, see LoadAgentKey) derives each
	// session's agent secret. Nil: a random key for this process's life, so
	// that a server started anew cannot reach the sessions of the last.
	AgentKey []byte
	// SingleUser refuses a second user (singleuser.go): the runtime
	// isolates nothing between users (the local runtime without
	// --insecure-local-runtime).
	SingleUser bool
	// RuntimeWarnings say what the runtime cannot enforce; whoami shows
	// them (`devgpu doctor`).
	RuntimeWarnings []string
	// Front door (see frontdoor.go); zero values take the defaults.
	// TLS, when set, is served on Serve's listener (HTTP/1.1 only).
	TLS                  *tls.Config
	ReadHeaderTimeout    time.Duration
	ReadTimeout          time.Duration
	IdleTimeout          time.Duration
	MaxTunnelsPerUser    int
	MaxTunnelsPerAddress int
	MaxConnsPerAddress   int
	// OpenFileLimit sizes the caps on connections and tunnels in all;
	// zero reads the process's RLIMIT_NOFILE.
	OpenFileLimit int
	// MetricsToken, when set, is the bearer token /metrics requires; it
	// then also shows per-project series. Without it /metrics shows no
	// project or user names.
	MetricsToken string
	// OIDC, when set, lets people log in with the organisation's identity
	// provider (sso.go); nil: API tokens only.
	OIDC *sso.Config
	// PublicURL is the URL people open the web console at, such as
	// https://devgpu.example.com (ParsePublicURL checks it). The web
	// console's single sign-on needs it (its redirect URI is under it),
	// and when it is set the console's origin checks and cookies follow
	// it instead of each request's Host and TLS, so that a reverse proxy
	// may terminate TLS (console.go). Nil: no single sign-on in the
	// browser.
	PublicURL *url.URL
}

// Defaults for Config's timing knobs.
const (
	DefaultReapInterval     = 250 * time.Millisecond
	DefaultLivenessInterval = 5 * time.Second
	DefaultPingInterval     = 10 * time.Second
	DefaultBudgetInterval   = 10 * time.Second
	DefaultPoolInterval     = 2 * time.Second
	DefaultStoreRetry       = time.Second
	// DefaultLogRetentionInterval: logs are kept for days, so deleting
	// them an hour late matters little.
	DefaultLogRetentionInterval = time.Hour
	// agentIdleExitMargin is how much longer than the detach grace an agent
	// waits without connections before it stops itself: the control plane
	// normally ends the session first, so this only matters when the
	// control plane is gone.
	agentIdleExitMargin = time.Minute
)

// Server is the control plane.
type Server struct {
	store    store.Store
	backends []Backend
	log      *slog.Logger
	cfg      Config
	now      func() time.Time

	mu    sync.Mutex
	live  map[string]*liveSession // running sessions, by id
	cards []store.RateCard        // every rate card, oldest first
	// detached holds, per open attachment, a channel closed once its
	// detach has been fully processed.
	detached       map[int64]chan struct{}
	nextAttachment int64
	// shells holds the open attachments by their public id (access.go).
	shells map[string]*attachment
	// unrecorded holds the sessions stopped in the runtime whose end the
	// store has not accepted yet, by id; recordEnds retries them.
	unrecorded map[string]pendingEnd
	// starts are the session starts in flight (transition.go).
	starts startRegistry
	// storeErr is the store's last failure to write, nil while it writes.
	storeErr error
	// capStale holds the backends whose capacity could not be read or
	// recorded yet (capacity.go); recordEnds retries them.
	capStale map[string]bool
	// endings are the sessions this replica is ending that it holds no
	// live entry for (endSession), so that it ends each once at a time.
	endings map[string]bool
	// undetached are the attachments whose removal the store refused,
	// retried by the heartbeat (replica.go).
	undetached map[int64]pendingDetach
	// lead is this replica's leader lease (lease.go).
	lead leadership
	// registered: this replica's record is in the store (replica.go).
	registered bool
	// lastBeat is when this replica last registered or heartbeated
	// (process clock, monotonic): /readyz answers from it (readyz.go).
	lastBeat time.Time
	// limitsRead is when checkLimits last read every project's limits
	// (only its loop touches it).
	limitsRead time.Time

	// The queue lives in the store (queue.go); qmu guards what this
	// process knows of it: the requests waiting on each queued session,
	// and the channel closed when a queued session moves.
	qmu      sync.Mutex
	qwaiters map[string][]*queueWaiter
	qchanged chan struct{}
	qkick    chan struct{} // wakes the queue loop
	qclosing chan struct{} // closed when the server shuts down
	qclose   sync.Once
	qrun     sync.Mutex // held while the queue loop runs

	// sso is the identity provider of Config.OIDC, nil without one
	// (sso.go); requireSSO the org policy's RequireSSO as of this
	// replica's last heartbeat; ssoLocks serialise the re-checks of a
	// login on this replica.
	sso        *sso.Provider
	requireSSO atomic.Bool
	ssoLocks   loginLocks
	// authLimit limits the sign-in endpoints per client address
	// (authlimit.go).
	authLimit *authLimiter

	metrics *metrics
	tunnels *tunnelLimiter // caps on open shells
	// liveAnswers are the agents' recent answers to the live view (live.go).
	liveAnswers liveAnswers
	// jobs are the followers of detached runs (jobs.go).
	jobs *jobFollowers
	// warmUser owns the ready sessions of warm pools until they are claimed.
	warmUser  store.User
	refilling sync.Mutex // held while a pool refill runs

	wg      sync.WaitGroup // every goroutine Close waits for (owned.go)
	ownMu   sync.Mutex     // guards closing
	closing bool           // Close has begun: enter refuses new work
	cancel  context.CancelFunc
	ctx     context.Context
}

// New reconciles the store with the backends' runtimes and records their
// capacity, then starts the lifecycle loops. Call Close to stop them.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: a store is required")
	}
	if err := validateBackends(cfg.Backends); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReapInterval == 0 {
		cfg.ReapInterval = DefaultReapInterval
	}
	if cfg.LivenessInterval == 0 {
		cfg.LivenessInterval = DefaultLivenessInterval
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.PoolInterval == 0 {
		cfg.PoolInterval = DefaultPoolInterval
	}
	if cfg.QueueInterval == 0 {
		cfg.QueueInterval = DefaultQueueInterval
	}
	if cfg.BudgetInterval == 0 {
		cfg.BudgetInterval = DefaultBudgetInterval
	}
	if cfg.StoreRetryInterval == 0 {
		cfg.StoreRetryInterval = DefaultStoreRetry
	}
	if cfg.LogRetentionInterval == 0 {
		cfg.LogRetentionInterval = DefaultLogRetentionInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AgentKey == nil && cfg.OIDC == nil { // single sign-on needs a persistent one (setupSSO)
		cfg.AgentKey = processKey()
	}
	if cfg.Replica.ID == "" {
		// Random per process: a restarted server is a new replica, and
		// the leader forgets the old one with its shells.
		cfg.Replica.ID = newReplicaID()
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.ReplicaTimeout == 0 {
		cfg.ReplicaTimeout = defaultReplicaTimeoutBeats * cfg.HeartbeatInterval
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	cfg.setFrontDoorDefaults()
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{
		store: cfg.Store, backends: cfg.Backends, log: cfg.Logger, cfg: cfg, now: cfg.Now,
		live: map[string]*liveSession{}, detached: map[int64]chan struct{}{}, unrecorded: map[string]pendingEnd{}, capStale: map[string]bool{},
		endings: map[string]bool{}, undetached: map[int64]pendingDetach{},
		qwaiters: map[string][]*queueWaiter{}, qchanged: make(chan struct{}), qkick: make(chan struct{}, 1), qclosing: make(chan struct{}), ctx: loopCtx, cancel: cancel,
		jobs: newJobFollowers(),
	}
	if err := s.setupSSO(); err != nil {
		cancel()
		return nil, err
	}
	s.metrics = newMetrics(s)
	_, maxTunnels := fdBudget(cfg.OpenFileLimit)
	s.tunnels = newTunnelLimiter(cfg.MaxTunnelsPerUser, cfg.MaxTunnelsPerAddress, maxTunnels)
	var err error
	if s.warmUser, err = ensureWarmUser(ctx, cfg.Store, s.now()); err != nil {
		cancel()
		return nil, err
	}
	if err := s.setRates(ctx, cfg.Rates); err != nil {
		cancel()
		return nil, err
	}
	// A store that cannot write must not keep the server, which ends
	// sessions, from starting: the heartbeat registers it once it can.
	if err := s.registerReplica(ctx); err != nil {
		s.storeWrote(err)
		s.log.Warn("register this server among the replicas; retried at each heartbeat", "err", err)
	}
	if err := s.removeOthersAtStart(ctx); err != nil {
		s.storeWrote(err)
		s.log.Warn("forget the replicas of an earlier server on this store", "err", err)
	}
	// A replica that leads at once (the only one, as on SQLite) reconciles
	// before the API answers, as a restarted server always did; another
	// reconciles when it gains the lease (leaseLoop).
	if _, err := s.renewLeadership(ctx); err != nil {
		s.log.Warn("take the leader lease; retried", "err", err)
	}
	if fctx, leads := s.leaderContext(ctx); leads {
		s.log.Info("this replica leads", "replica", cfg.Replica.ID, "epoch", s.lead.lease.Epoch)
		if err := s.reconcile(fctx); err != nil {
			cancel()
			return nil, err
		}
		s.syncAllCapacity(fctx)
	}
	if cfg.Link != nil {
		cfg.Link.SetVerifier(s.verifyLink)
		s.wireLink() // link.go: links recorded in the store, relays to other replicas
	}
	s.refreshLimits(ctx, 0)
	s.refreshSSOPolicy(ctx)
	s.probeStore(ctx)
	s.wg.Add(13) // owned: Close waits for them (owned.go)
	// Every replica: its own record, lease, shells and unrecorded ends.
	go s.leaseLoop() // returns at once on an exclusive store
	go s.loop(cfg.HeartbeatInterval, "heartbeat", s.heartbeat)
	go s.loop(accessCheckInterval, "check the access of open shells", s.checkShellAccess)
	go s.loop(cfg.StoreRetryInterval, "record session ends", s.recordEnds)
	// The leader only (lease.go).
	go s.loopKicked(cfg.QueueInterval, s.qkick, "run the queue", s.asLeader(s.runQueue))
	go s.loop(cfg.ReapInterval, "reap detached sessions", s.asLeader(s.reapDetached))
	go s.loop(cfg.LivenessInterval, "liveness check", s.asLeader(s.checkLiveness))
	go s.loop(limitCheckInterval, "idle and lifetime check", s.asLeader(s.checkLimits))
	go s.loop(cfg.BudgetInterval, "budget check", s.asLeader(s.checkBudgets))
	go s.loop(cfg.PoolInterval, "warm pools", s.asLeader(func(ctx context.Context) error { s.refillAs(ctx); return nil }))
	go s.loop(cfg.HeartbeatInterval, "remove dead replicas", s.asLeader(s.removeDeadReplicas))
	go s.loop(cfg.LogRetentionInterval, "delete expired logs", s.asLeader(s.deleteExpiredLogs))
	// Every replica: it follows detached runs while it leads, and stops
	// following when it no longer does.
	go s.loopKicked(cfg.LivenessInterval, s.jobs.kick, "follow detached runs", s.followJobs)
	if s.sso != nil {
		s.wg.Add(1)
		go s.loop(ssoLoopInterval(s.sso.Config().RecheckInterval), "re-check single sign-ons", s.asLeader(s.recheckLogins))
	}
	s.watchCapacity()
	return s, nil
}

// Close stops the lifecycle loops and waits for every goroutine the
// server started (owned.go), open tunnels included, then removes this
// replica's attachments and record and gives up the leader lease. Sessions
// keep running, their shells here counted as vanished (the detach grace
// applies); the next leader reconciles them.
func (s *Server) Close() {
	s.stopOwned()
	s.lastRecordEnds()
	s.deregister()
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler {
	return newAPI(s).routes()
}

// Serve answers HTTP, or HTTPS with Config.TLS, on ln until ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	maxConns, _ := fdBudget(s.cfg.OpenFileLimit)
	ln = newConnLimiter(ln, maxConns, s.cfg.MaxConnsPerAddress, s.metrics.connsRefused.Inc)
	s.log.Info("front door", "tls", s.cfg.TLS != nil, "open_file_limit", s.cfg.OpenFileLimit, "max_connections", maxConns,
		"max_tunnels", s.tunnels.max, "max_tunnels_per_user", s.cfg.MaxTunnelsPerUser, "max_tunnels_per_address", s.cfg.MaxTunnelsPerAddress)
	if s.cfg.TLS != nil {
		cfg := s.cfg.TLS.Clone()
		// HTTP/1.1 only: WebSocket tunnels upgrade from it.
		cfg.NextProtos = []string{"http/1.1"}
		ln = tls.NewListener(ln, cfg)
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
	}
	srv.RegisterOnShutdown(s.closeWaits) // queued clients wait on at the next server
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		<-errc // Serve has returned: its goroutine is done
		return nil
	}
}
