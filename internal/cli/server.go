//go:build linux

package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/devgpu/devgpu/internal/gpu"
	"github.com/devgpu/devgpu/internal/image"
	"github.com/devgpu/devgpu/internal/link"
	"github.com/devgpu/devgpu/internal/netpolicy"
	"github.com/devgpu/devgpu/internal/runtime"
	"github.com/devgpu/devgpu/internal/runtime/hostgpu"
	"github.com/devgpu/devgpu/internal/runtime/inproc"
	"github.com/devgpu/devgpu/internal/runtime/local"
	"github.com/devgpu/devgpu/internal/runtime/oci"
	"github.com/devgpu/devgpu/internal/server"
	"github.com/devgpu/devgpu/internal/sso"
	"github.com/devgpu/devgpu/internal/store"
	"github.com/devgpu/devgpu/internal/store/postgres"
	"github.com/devgpu/devgpu/internal/store/sqlite"
	"github.com/devgpu/devgpu/internal/version"
)

// DefaultListen is where `devgpu server` answers unless told otherwise.
const DefaultListen = "127.0.0.1:8470"

type serverOptions struct {
	config           string
	dev              bool
	listen           string
	data             string
	storeURL         string
	gpus             string
	logLevel         string
	livenessInterval time.Duration
	pingInterval     time.Duration
	budgetInterval   time.Duration
	rates            *store.RateCard
	runtime          string
	// backends are the config file's; none means one named after runtime.
	backends      []backendConfig
	oci           ociConfig
	collectImages func(context.Context) // set by the oci runtime with a disk budget
	registries    map[string]image.Credential
	insecureLocal bool // server_local.go
	localMaxPids  int
	front         frontDoorOptions
	replica       replicaOptions // server_store.go
	oidc          *sso.Config    // server_oidc.go; nil: API tokens only
	// publicURL is --public-url (config: public_url), public the URL it
	// names once checked (server.ParsePublicURL); nil when not given.
	publicURL string
	public    *url.URL
}

// frontDoorOptions are how the server meets the network: TLS, plain HTTP
// beyond loopback, the metrics token and the caps on open shells.
type frontDoorOptions struct {
	tlsCert, tlsKey      string
	insecureHTTP         bool
	metricsToken         string
	maxTunnelsPerUser    int
	maxTunnelsPerAddress int
	maxConnsPerAddress   int
}

// ociConfig configures the oci runtime: runc containers from images, GPUs
// through CDI, and per-project network egress.
type ociConfig struct {
	// AgentBinary is a static devgpu (CGO_ENABLED=0) that runs inside
	// images without a libc; default: devgpu-agent beside this executable.
	AgentBinary string `json:"agent_binary"`
	// DefaultImage runs where neither the session nor its project names one.
	DefaultImage string `json:"default_image"`
	// Bridge and Subnet place the sessions' network (defaults devgpu0 and
	// 10.88.0.0/16).
	Bridge string `json:"bridge"`
	Subnet string `json:"subnet"`
	// ImageDiskBudget ("200GB") bounds the image store: every 10 minutes,
	// images no session uses are removed, least recently used first,
	// until the store fits. Empty: never.
	ImageDiskBudget string `json:"image_disk_budget"`
	// Seccomp is every session's seccomp profile: empty for Docker's
	// default, the path of a profile in Docker's JSON format, or
	// "unconfined" for none (logged as a warning at every start).
	Seccomp string `json:"seccomp"`
	// Limits are the cgroup limits per GPU type ("" for the others); by
	// default oci.DefaultLimits, each capped to the sessions' share of
	// the host.
	Limits map[string]ociLimits `json:"limits"`
	// DiskPool ("500GB") is the space that sessions' writable layers and
	// workspaces share, allocated on the host's disk when the runtime
	// first starts (default: half the space free then); sessions can
	// never write more than it. WritableLayer ("20GB", the default) bounds
	// what one session writes outside its workspace;
	// WritableLayerPerGPU sets it per GPU type.
	DiskPool            string            `json:"disk_pool"`
	WritableLayer       string            `json:"writable_layer"`
	WritableLayerPerGPU map[string]string `json:"writable_layer_per_gpu"`
}

func newServerCmd() *cobra.Command {
	var o serverOptions
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane",
		Long: `Run the control plane: the API, the broker for shells, and the session lifecycle.

Several servers ("replicas") may share one PostgreSQL store behind a load
balancer: each serves any request, one at a time (the leader) runs the
background work, and each tells the others where to reach it with
--advertise-url. /readyz says whether this replica is ready and leads.
SQLite serves one server only.

With --dev it is a complete system on this machine with no configuration:
SQLite under the data directory, the local runtime, this host's NVIDIA GPUs
(or a simulated inventory), an organisation admin named after you, a project
"default" with GPUs enabled, and the CLI config written for you.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.loadConfig(cmd); err != nil {
				return err
			}
			if err := o.storeFromEnv(cmd); err != nil {
				return err
			}
			if err := o.checkAdvertiseURL(); err != nil {
				return err
			}
			if o.publicURL != "" {
				u, err := server.ParsePublicURL(o.publicURL)
				if err != nil {
					return err
				}
				o.public = u
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runServer(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "server config file (JSON): listen, data, store, gpus, rates; flags override it")
	f.StringVar(&o.runtime, "runtime", "", "where sessions run: oci (runc containers, isolated; the default), local (sandboxed processes of this user, for one person; the default with --dev), or inproc (agents inside the server, for benchmarks)")
	f.BoolVar(&o.insecureLocal, "insecure-local-runtime", false, "let the local runtime, which isolates sessions from neither this host nor each other, run without --dev or for several users")
	f.IntVar(&o.localMaxPids, "local-max-pids", 0, "local runtime: most processes and threads per session (default 4096; needs a writable pids cgroup)")
	f.StringVar(&o.oci.AgentBinary, "agent-binary", "", "oci runtime: a static devgpu binary for inside containers (default: devgpu-agent beside this one)")
	f.StringVar(&o.oci.DefaultImage, "default-image", "", "oci runtime: the image of sessions whose project names none")
	f.BoolVar(&o.dev, "dev", false, "embedded default: bootstrap an admin and project \"default\", write the CLI config")
	f.StringVar(&o.listen, "listen", DefaultListen, "address to serve the API on")
	f.StringVar(&o.data, "data", "", "data directory (default $XDG_DATA_HOME/devgpu or ~/.local/share/devgpu)")
	f.StringVar(&o.storeURL, "store", "", "store: a postgres:// URL without a password, or a SQLite file path (default DATA/devgpu.db); a URL with a password goes in the config file's store field or $DEVGPU_STORE_URL")
	f.StringVar(&o.gpus, "gpus", "", "simulate this GPU inventory, e.g. t4:4,a100:2 (default: this host's NVIDIA GPUs, else t4:4)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.DurationVar(&o.livenessInterval, "liveness-interval", server.DefaultLivenessInterval, "how often to check that sessions are alive")
	f.DurationVar(&o.pingInterval, "ping-interval", server.DefaultPingInterval, "WebSocket keepalive interval for detecting vanished clients")
	f.DurationVar(&o.budgetInterval, "budget-interval", server.DefaultBudgetInterval, "how often budgets are checked")
	f.StringVar(&o.front.tlsCert, "tls-cert", "", "PEM certificate chain to serve HTTPS with (config: tls_cert)")
	f.StringVar(&o.front.tlsKey, "tls-key", "", "PEM private key of --tls-cert (config: tls_key)")
	f.BoolVar(&o.front.insecureHTTP, "insecure-http", false, "serve plain HTTP on a non-loopback address, for a TLS proxy in front (config: insecure_http)")
	f.StringVar(&o.publicURL, "public-url", "", "URL people open the web console at, e.g. https://devgpu.example.com: single sign-on in the browser needs it, and the console's origin checks and cookies follow it, so a reverse proxy may end TLS (config: public_url)")
	f.StringVar(&o.replica.advertiseURL, "advertise-url", "", "URL at which the other replicas sharing this PostgreSQL store reach this one, e.g. https://10.0.0.7:8470 (config: advertise_url; default: the URL of --listen)")
	_ = f.MarkHidden("liveness-interval")
	_ = f.MarkHidden("budget-interval")
	_ = f.MarkHidden("ping-interval")
	cmd.AddCommand(newServerStopCmd())
	return cmd
}

// checkAdvertiseURL refuses, before anything is opened, an advertised URL
// that other replicas sharing a PostgreSQL store could not use. With no
// --advertise-url the URL of --listen is advertised, and an unspecified
// listen address (0.0.0.0, ::, no host) becomes 127.0.0.1: every other
// replica relaying to it would dial itself. A relay carries the agent's
// secret preamble, so plain http is only for loopback (tests, one host).
// A SQLite store serves this server alone: nothing relays to it.
func (o *serverOptions) checkAdvertiseURL() error {
	if !isPostgresURL(o.storeURL) {
		return nil
	}
	if o.replica.advertiseURL == "" {
		host, _, err := net.SplitHostPort(o.listen)
		if err != nil {
			return nil // net.Listen says what is wrong with it
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("--listen %s names no address the other replicas sharing the PostgreSQL store could reach this one at; give --advertise-url with this replica's own address, e.g. https://10.0.0.7:8470", o.listen)
		}
		if o.front.insecureHTTP && !isLoopbackHost(host) {
			return fmt.Errorf("--listen %s with --insecure-http would advertise a plain http:// URL to the other replicas, and their relays carry agents' secrets; give an https:// --advertise-url at which they reach this replica", o.listen)
		}
		return nil
	}
	u, err := url.Parse(o.replica.advertiseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Hostname() == "" {
		return fmt.Errorf("--advertise-url %q is not an https:// URL with a host; give the URL the other replicas reach this one at, e.g. https://10.0.0.7:8470", o.replica.advertiseURL)
	}
	if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("--advertise-url %s is plain http on a non-loopback host, and relays to it carry agents' secrets; give an https:// URL (plain http is for 127.0.0.1 only)", o.replica.advertiseURL)
	}
	return nil
}

// isLoopbackHost reports whether host (a name or an address) is this
// machine's loopback.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func runServer(ctx context.Context, o serverOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q is not one of debug, info, warn, error", o.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dataDir, err := resolveDataDir(o.data)
	if err != nil {
		return err
	}
	// First, so that a second server on the same data changes nothing.
	removePid, err := writePidFile(dataDir) // server_pid.go: for `devgpu server stop`
	if err != nil {
		return err
	}
	defer removePid()
	agentKey, err := loadAgentKey(dataDir) // server_agentkey.go: $DEVGPU_AGENT_KEY or DATA/agent.key
	if err != nil {
		return err
	}
	tlsConfig, caFile, err := o.serverTLS(ctx, dataDir, log)
	if err != nil {
		return err
	}
	// Sockets are files: take the whole hard limit; the server keeps a
	// share of it free for the store and the runtime (see server.fdBudget).
	if limit, err := server.RaiseOpenFileLimit(); err != nil {
		log.Warn("cannot raise the open-file limit; fewer shells can be open at once", "limit", limit, "err", err)
	} else {
		log.Debug("open-file limit", "limit", limit)
	}
	backendConfigs, err := o.resolveBackends(log)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, o.storeURL, dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := o.checkLocalUsers(ctx, st); err != nil {
		return err
	}

	// Only a runtime of this host lends its GPUs (o.runtime names it).
	var devices []hostgpu.Device
	if o.runtime != "" {
		devs, err := inventory(ctx, o.gpus, log)
		if err != nil {
			return err
		}
		devices = hostgpu.FromGPU(devs)
	} else if o.gpus != "" {
		return errors.New("--gpus (or the config's \"gpus\") simulates this host's GPUs, but no backend runs sessions on this host; drop it, or add a backend with runtime local, oci or inproc")
	}
	installation, err := installationID(dataDir)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s (%v); choose another address with --listen", o.listen, err)
	}
	defer ln.Close()
	var hub *link.Hub
	var backends []server.Backend
	var warnings []string
	for _, b := range backendConfigs {
		var rt runtime.Runtime
		if (b.Runtime == "kube" || b.Runtime == "aca") && hub == nil {
			// Their agents dial out to this server's link endpoint.
			hub = link.NewHub(log)
			defer hub.Close()
		}
		switch b.Runtime {
		case "kube":
			k, closeKube, err := kubeRuntime(ctx, b.Name, b.Kube, installation, hub, caFile, log)
			if err != nil {
				return err
			}
			defer closeKube()
			rt = k
		case "aca":
			a, closeACA, err := acaRuntime(ctx, b.Name, b.Aca, installation, hub, caFile, log) // server_aca_azure.go
			if err != nil {
				return err
			}
			defer closeACA()
			rt = a
		default:
			if rt, err = o.newRuntime(b.Runtime, dataDir, ln.Addr(), devices, log); err != nil {
				return err
			}
		}
		backends = append(backends, server.Backend{Name: b.Name, Runtime: rt})
		warnings = append(warnings, o.runtimeWarnings(rt)...)
	}
	if o.collectImages != nil {
		// Owned: the server stops and waits for it before it returns, so
		// that no trim is cut halfway by the process's exit.
		gcCtx, stopGC := context.WithCancel(ctx)
		collected := make(chan struct{})
		go func() { defer close(collected); o.collectImages(gcCtx) }()
		defer func() { stopGC(); <-collected }()
	}
	url := serverURL(ln.Addr(), tlsConfig != nil)

	if err := bootstrap(ctx, st, o.dev, url, caFile, dataDir, log); err != nil {
		return err
	}
	srv, err := server.New(ctx, server.Config{
		Store: st, Exclusive: !isPostgresURL(o.storeURL), Replica: server.Replica{URL: cmp.Or(o.replica.advertiseURL, url)},
		HeartbeatInterval: o.replica.heartbeat, LeaseTTL: o.replica.leaseTTL,
		Backends: backends, Link: hub, Logger: log, AgentKey: agentKey,
		LivenessInterval: o.livenessInterval, PingInterval: o.pingInterval,
		BudgetInterval: o.budgetInterval, Rates: o.rates, WorkspaceDir: filepath.Join(dataDir, "workspaces"),
		TLS: tlsConfig, MetricsToken: o.front.metricsToken, MaxTunnelsPerUser: o.front.maxTunnelsPerUser,
		MaxTunnelsPerAddress: o.front.maxTunnelsPerAddress, MaxConnsPerAddress: o.front.maxConnsPerAddress,
		SingleUser: o.singleUser(), RuntimeWarnings: warnings, OIDC: o.oidc, PublicURL: o.public,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	if o.oidc != nil && o.public == nil {
		log.Warn("the web console offers no single sign-on without the URL people open it at; set public_url in the server config (or --public-url)")
	}
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.Name + "=" + b.Runtime.Name()
	}
	log.Info("devgpu server listening", "version", version.String(), "url", url, "data", dataDir, "replica", srv.ReplicaID(),
		"installation", installation, "backends", strings.Join(names, ","), "host_gpus", len(devices))
	return srv.Serve(ctx, ln)
}

// serverConfig is the file --config reads.
type serverConfig struct {
	Listen  string `json:"listen"`
	Data    string `json:"data"`
	Store   string `json:"store"`
	GPUs    string `json:"gpus"`
	Runtime string `json:"runtime"`
	// Backends are the runtimes sessions run on, each under its own name
	// (the first is the default); without them, one named after Runtime.
	Backends []backendConfig `json:"backends"`
	OCI      *ociConfig      `json:"oci"`
	Rates    *ratesConfig    `json:"rates"`
	// Registries holds credentials per registry host; the docker
	// config.json ($DOCKER_CONFIG) is read too.
	Registries map[string]image.Credential `json:"registries"`
	// TLSCert and TLSKey are PEM files to serve HTTPS with; InsecureHTTP
	// allows plain HTTP on a non-loopback address (a TLS proxy in front).
	TLSCert      string `json:"tls_cert"`
	TLSKey       string `json:"tls_key"`
	InsecureHTTP bool   `json:"insecure_http"`
	// MetricsToken is the bearer token /metrics requires (also
	// $DEVGPU_METRICS_TOKEN); without one it shows no project names.
	MetricsToken string `json:"metrics_token"`
	// Caps on shells and connections open at once; 0 takes the default.
	MaxTunnelsPerUser    int `json:"max_tunnels_per_user"`
	MaxTunnelsPerAddress int `json:"max_tunnels_per_address"`
	MaxConnsPerAddress   int `json:"max_conns_per_address"`
	// AdvertiseURL is where the other replicas reach this one (also
	// --advertise-url); Replica tunes leadership (server_store.go).
	AdvertiseURL string         `json:"advertise_url"`
	Replica      *replicaConfig `json:"replica"`
	// PublicURL is the URL people open the web console at (also
	// --public-url).
	PublicURL string `json:"public_url"`
	// OIDC is the identity provider people log in with (server_oidc.go).
	OIDC *oidcConfig `json:"oidc"`
}

// ratesConfig prices a GPU-hour per type, or per type@region.
type ratesConfig struct {
	Currency   string             `json:"currency"`
	PerGPUHour map[string]float64 `json:"per_gpu_hour"`
}

// loadConfig reads --config; flags given on the command line win.
func (o *serverOptions) loadConfig(cmd *cobra.Command) error {
	if o.config == "" {
		return nil
	}
	b, err := os.ReadFile(o.config)
	if err != nil {
		return fmt.Errorf("read server config: %w", err)
	}
	var c serverConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fmt.Errorf("server config %s is not valid (%v); it takes listen, data, store, gpus, runtime or backends, oci, rates, registries, advertise_url, public_url, replica, oidc and the TLS and connection settings", o.config, err)
	}
	for flag, v := range map[string]struct {
		dst *string
		val string
	}{"listen": {&o.listen, c.Listen}, "data": {&o.data, c.Data}, "store": {&o.storeURL, c.Store}, "gpus": {&o.gpus, c.GPUs}, "runtime": {&o.runtime, c.Runtime},
		"public-url": {&o.publicURL, c.PublicURL}} {
		if v.val != "" && !cmd.Flags().Changed(flag) {
			*v.dst = v.val
		}
	}
	if c.OCI != nil {
		flags := o.oci
		o.oci = *c.OCI
		if cmd.Flags().Changed("agent-binary") {
			o.oci.AgentBinary = flags.AgentBinary
		}
		if cmd.Flags().Changed("default-image") {
			o.oci.DefaultImage = flags.DefaultImage
		}
	}
	o.registries = c.Registries
	o.backends = c.Backends
	o.front.loadConfig(cmd, c)
	if err := o.replica.loadConfig(cmd, c); err != nil {
		return fmt.Errorf("server config %s: %w", o.config, err)
	}
	if c.OIDC != nil {
		oidc, err := c.OIDC.ssoConfig()
		if err != nil {
			return fmt.Errorf("server config %s: %w", o.config, err)
		}
		o.oidc = oidc
	}
	if c.Rates != nil {
		card, err := c.Rates.card()
		if err != nil {
			return fmt.Errorf("server config %s: %w", o.config, err)
		}
		o.rates = card
	}
	return nil
}

// card turns the rates into a rate card, prices in millionths.
func (r ratesConfig) card() (*store.RateCard, error) {
	if r.Currency == "" {
		return nil, errors.New(`rates need a currency, e.g. "USD"`)
	}
	card := &store.RateCard{Currency: r.Currency}
	keys := slices.Sorted(maps.Keys(r.PerGPUHour))
	for _, key := range keys {
		price := r.PerGPUHour[key]
		if price < 0 || math.IsNaN(price) || math.IsInf(price, 0) {
			return nil, fmt.Errorf("rate for %s is %g; give a price of 0 or more per GPU-hour", key, price)
		}
		typ, region, _ := strings.Cut(key, "@")
		card.Rates = append(card.Rates, store.Rate{GPUType: typ, Region: region, PerHourMicros: int64(math.Round(price * 1e6))})
	}
	return card, nil
}

// newRuntime builds a runtime of this host, kind local, oci or inproc,
// lending devices.
func (o *serverOptions) newRuntime(kind, dataDir string, api net.Addr, devices []hostgpu.Device, log *slog.Logger) (runtime.Runtime, error) {
	switch kind {
	case "local":
		return local.New(local.Config{Dir: filepath.Join(dataDir, "sessions"), Logger: log, Devices: devices,
			Hide: o.localHidden(dataDir), MaxPids: o.localMaxPids})
	case "inproc":
		// For benchmarks of the control plane alone: agents run inside the
		// server process, isolate nothing, and end with it.
		dir := filepath.Join(dataDir, "inproc")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		return inproc.New(inproc.NewRegistry(dir, devices...)), nil
	case "oci":
	default:
		return nil, fmt.Errorf("--runtime %q is not local, oci or inproc; choose one of them", kind)
	}
	agentBin, err := staticAgentPath(o.oci.AgentBinary)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(agentBin); err != nil {
		return nil, fmt.Errorf("the oci runtime needs a static agent binary at %s (build it with `make build`, or pass --agent-binary): %w", agentBin, err)
	}
	images, err := image.Open(filepath.Join(dataDir, "images"), image.Options{Keychain: image.Keychain(o.registries), Logger: log})
	if err != nil {
		return nil, err
	}
	if o.oci.ImageDiskBudget != "" {
		budget, err := humanize.ParseBytes(o.oci.ImageDiskBudget)
		if err != nil {
			return nil, fmt.Errorf("image_disk_budget %q is not a size such as 200GB", o.oci.ImageDiskBudget)
		}
		o.collectImages = func(ctx context.Context) { collectImages(ctx, images, int64(budget), log) }
	}
	ncfg := netpolicy.Config{Bridge: o.oci.Bridge, RuntimeDir: filepath.Join(dataDir, "netns")}
	if o.oci.Subnet != "" {
		if ncfg.Subnet, err = netip.ParsePrefix(o.oci.Subnet); err != nil {
			return nil, fmt.Errorf("oci subnet %q is not a CIDR such as 10.88.0.0/16", o.oci.Subnet)
		}
	}
	if tcp, ok := api.(*net.TCPAddr); ok {
		ncfg.APIPort = uint16(tcp.Port)
	}
	network, err := netpolicy.New(ncfg)
	if err != nil {
		return nil, err
	}
	// Start claims the bridge (one server per bridge) and rebuilds its
	// nftables table from scratch: nothing an earlier run left counts.
	if err := network.Start(context.Background()); err != nil {
		return nil, err
	}
	// Unix socket paths are short: keep the state directory's path short.
	disk, err := o.oci.diskConfig()
	if err != nil {
		return nil, err
	}
	limits, err := o.oci.limits()
	if err != nil {
		return nil, err
	}
	protectFromOOM(log)
	return oci.New(oci.Config{
		Seccomp: o.oci.Seccomp, Limits: limits,
		StateDir: filepath.Join(dataDir, "oci"), AgentPath: agentBin, Images: imageRootfs{images},
		Image: o.oci.DefaultImage, Network: network, Logger: log, Disk: disk, Devices: devices,
	})
}

// staticAgentPath is the static agent (devgpu built with -tags agentonly,
// CGO_ENABLED=0) that a runtime puts inside its sessions: configured, or
// devgpu-agent beside this executable, where `make build` puts it.
func staticAgentPath(configured string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find this executable, beside which the static agent devgpu-agent is looked for: %w", err)
	}
	return filepath.Join(filepath.Dir(self), "devgpu-agent"), nil
}

// resolveDataDir is the data directory as dataDirPath finds it, created
// if it is missing.
func resolveDataDir(dir string) (string, error) {
	dir, err := dataDirPath(dir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create data directory: %w", err)
	}
	return dir, nil
}

func openStore(ctx context.Context, url, dataDir string) (store.Store, error) {
	if isPostgresURL(url) {
		return postgres.Open(ctx, url)
	}
	if url == "" {
		url = filepath.Join(dataDir, "devgpu.db")
	}
	return sqlite.Open(ctx, url)
}

// inventory is the simulated inventory when --gpus is given, else the
// host's NVIDIA GPUs, else the default simulated one.
func inventory(ctx context.Context, spec string, log *slog.Logger) ([]gpu.Device, error) {
	if spec != "" {
		return gpu.ParseSimulated(spec)
	}
	devs, err := gpu.Discover(ctx, log)
	if err != nil {
		log.Warn("GPU discovery failed; simulating GPUs", "err", err)
	}
	if len(devs) > 0 {
		log.Info("found NVIDIA GPUs", "count", len(devs), "type", devs[0].Type)
		return devs, nil
	}
	log.Info("no NVIDIA GPU found; simulating " + gpu.DefaultSimulated)
	return gpu.ParseSimulated(gpu.DefaultSimulated)
}

// bootstrap creates the admin on a new installation. In dev mode it makes
// sure the CLI config on this machine points at this server with a valid
// token; otherwise it writes a new admin's token to a file once.
func bootstrap(ctx context.Context, st store.Store, dev bool, url, caFile, dataDir string, log *slog.Logger) error {
	admin := adminName()
	now := time.Now()
	var cfg config
	keep := false
	if dev {
		if c, err := loadConfig(); err == nil && c.URL == url && c.Token != "" {
			keep = server.ValidToken(ctx, st, c.Token, now)
			cfg = c
		}
	}
	// The CA file of a --dev certificate goes into the CLI config; one the
	// user gave for their own certificate stays.
	wantCA := cfg.CAFile
	if caFile != "" || strings.HasPrefix(url, "http://") {
		wantCA = caFile
	}
	caChanged := dev && cfg.CAFile != wantCA
	cfg.CAFile = wantCA
	token, err := server.Bootstrap(ctx, st, admin, dev, dev && !keep, now)
	if err != nil {
		return err
	}
	if token == "" && caChanged {
		// Same server and token, but its certificate's CA file changed.
		path, err := saveConfig(cfg)
		if err != nil {
			return err
		}
		log.Info("CLI config written", "path", path, "ca_file", caFile)
	}
	if token == "" {
		return nil
	}
	if !dev {
		path := filepath.Join(dataDir, "admin.token")
		if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			return fmt.Errorf("write the admin token: %w", err)
		}
		log.Info("created organisation admin; its token is in "+path, "user", admin)
		return nil
	}
	cfg.URL, cfg.Token = url, token
	path, err := saveConfig(cfg)
	if err != nil {
		return err
	}
	log.Info("CLI config written", "path", path, "user", admin)
	return nil
}

var userName = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}$`)

// adminName is the OS user's name, so sessions say who runs them.
func adminName() string {
	if u, err := user.Current(); err == nil && userName.MatchString(u.Username) {
		return u.Username
	}
	return "admin"
}

// imageRootfs gives the oci runtime the store's unpacked images, pulling
// with progress what is missing.
type imageRootfs struct{ store *image.Store }

func (i imageRootfs) Rootfs(ctx context.Context, ref string, progress func(done, total int64)) (string, error) {
	img, err := i.store.Ensure(ctx, ref, progress)
	return img.Dir, err
}

// imageGCInterval is how often the image store is trimmed to its budget.
const imageGCInterval = 10 * time.Minute

// collectImages trims the image store to budget until ctx ends, keeping
// every image a session's overlay is mounted on.
func collectImages(ctx context.Context, images *image.Store, budget int64, log *slog.Logger) {
	t := time.NewTicker(imageGCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		freed, err := images.GC(ctx, mountedImages(images.Root()), budget)
		if err != nil {
			log.Error("image garbage collection", "err", err)
		} else if freed > 0 {
			log.Info("image garbage collection", "freed_bytes", freed)
		}
	}
}

// mountedImages reports an image as in use while an overlay mount has its
// unpacked directory, root/rootfs/sha256/<hex>, as a lower layer.
func mountedImages(root string) func(digest string) bool {
	return func(digest string) bool {
		hex, ok := strings.CutPrefix(digest, "sha256:")
		if !ok {
			return true // unknown: keep it
		}
		mounts, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return true
		}
		return bytes.Contains(mounts, []byte("lowerdir="+filepath.Join(root, "rootfs", "sha256", hex)))
	}
}
